#!/usr/bin/env bash
# Prepare .venv once: torch and torchvision (a known-good pair unless already importable), then this
# package in editable mode with its test tools. Safe to run again; it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_version=${TORCH_VERSION:-2.14.1}
torchvision_version=${TORCHVISION_VERSION:-0.29.1}

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "installing torch==$torch_version torchvision==$torchvision_version into .venv (about a minute)"
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$torch_version" "torchvision==$torchvision_version"
fi
stamp=".venv/.imagenet-cli-$(sha1sum pyproject.toml | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi
