#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole suite (real processes, Gloo on loopback).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k distributed -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
