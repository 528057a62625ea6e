#!/usr/bin/env bash
# The README's performance figures: for a few models, training, input-pipeline and evaluation images/s,
# each beside the reference script's way, measured in the same run; then a short run's whole command
# (one epoch of 100 + 40 JPEGs) timed from start to exit against the reference script's, alternated. Uses .venv (set up if needed), or the
# Python named by $PYTHON with this checkout on its path. Extra arguments go to every `benchmark` call,
# e.g. a DATA directory to read JPEGs from, `--compile`, `--amp fp16`, `--json`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
  cli=("$PYTHON" -m imagenet_cli)
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  bash scripts/setup.sh
  cli=(.venv/bin/python -m imagenet_cli)
fi

if "${cli[0]}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # A GPU: the published comparison (ResNet-50, batch 256), then a small and a transformer model.
  "${cli[@]}" benchmark --arch resnet50 -b 256 --steps 20 --warmup 5 "$@"
  "${cli[@]}" benchmark --arch resnet18 -b 256 --steps 20 --warmup 5 --only train --only eval "$@"
  "${cli[@]}" benchmark --arch mobilenet_v3_large -b 256 --steps 20 --warmup 5 --only train --only eval "$@"
  "${cli[@]}" benchmark --arch vit_b_16 -b 128 --steps 10 --warmup 3 --only train --only eval "$@"
else
  # CPU only: ResNet-18 at 224 px, few steps (seconds each), and the input pipeline.
  "${cli[@]}" benchmark --arch resnet18 -b 32 --steps 3 --warmup 1 "$@"
fi
# Start-up and exit costs: what a CI job or smoke test pays (3 rounds, medians).
"${cli[@]}" benchmark --only e2e-command --arch resnet18 -b 20 --images 100 -j 2 --rounds 3 "$@"
