#!/usr/bin/env bash
# The main job on synthetic data: set up .venv if needed, then train ResNet-18 for two short epochs on
# learnable fake images (any machine, CPU included; about a minute on two cores). Extra arguments are
# passed on, e.g. `bash scripts/train-fake-data.sh --multiprocessing-distributed --nproc-per-node 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/imagenet-cli train --fake-data --arch resnet18 --epochs 2 -b 32 --lr 0.01 --output-dir runs/fake-data "$@"
