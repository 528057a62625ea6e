#!/usr/bin/env bash
# The GPU path in one command, on a machine with an NVIDIA GPU and a preinstalled torch (nothing is
# installed): the `cuda` tests (tests/gpu), then ResNet-50 at batch 256 — `benchmark` training against the
# reference script's fp32 way, `benchmark` e2e from JPEG files, and training from those files with the
# loader workers decoding and with --decode-on-device, with peak GPU memory — and one summary at the end.
#
#   bash scripts/gpu-check.sh            # python3 with this checkout on its path; or PYTHON=/path/to/python
#
# Sized for 8 minutes on one H100/H200-class GPU: each part runs in what is left of GPU_CHECK_BUDGET
# seconds (default 468), the measurements first. Exits 1 when CUDA is missing (at once, saying so), or when a
# test or a measurement failed (its logs are then kept). GPU_CHECK_KEEP=1 keeps everything.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu-check: $PY not found (set PYTHON=/path/to/python)" >&2
  exit 1
fi
if ! problem=$("$PY" - 2>&1 <<'EOF'
import sys
try:
    import torch
except Exception as exc:
    sys.exit(f"{sys.executable} cannot import torch ({exc}); this check needs a preinstalled torch")
if not torch.cuda.is_available():
    sys.exit(f"CUDA is not available to {sys.executable} (torch {torch.__version__}, CUDA build "
             f"{torch.version.cuda}): run this on a machine with an NVIDIA GPU and its driver")
missing = []
for name in ("torchvision", "typer", "rich", "numpy", "PIL"):
    try:
        __import__(name)
    except Exception:
        missing.append(name)
if missing:
    sys.exit(f"{sys.executable} lacks {', '.join(missing)}, which imagenet-cli needs")
EOF
); then
  echo "gpu-check: ${problem##*$'\n'}" >&2
  exit 1
fi

BUDGET="${GPU_CHECK_BUDGET:-468}"
work="$(mktemp -d "${TMPDIR:-/tmp}/imagenet-cli-gpu-check.XXXXXX")"
keep="${GPU_CHECK_KEEP:-0}"
trap '[[ $keep == 1 ]] || rm -rf "$work"' EXIT
cli=("$PY" -m imagenet_cli)
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0)
print(f'{torch.cuda.device_count()} x {p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}')" \
  >"$work/machine.txt"
echo "gpu-check: $(cat "$work/machine.txt"); work directory $work"

# part NAME CAP COMMAND...: run COMMAND with a time limit of CAP seconds or what is left of the budget,
# whichever is less; its output goes to the terminal and NAME.log, its exit code to NAME.rc.
part() {
  local name="$1" cap="$2"
  shift 2
  local left=$((BUDGET - SECONDS - 12))  # keep a moment for the summary
  if ((left < 20)); then
    echo "gpu-check: no time left for $name" | tee "$work/$name.log"
    return
  fi
  ((left < cap)) && cap=$left
  echo "---- $name (at most ${cap}s)"
  local limit=()
  command -v timeout >/dev/null 2>&1 && limit=(timeout -s INT -k 20 "$cap")
  ${limit[@]+"${limit[@]}"} "$@" 2>&1 | tee "$work/$name.log"
  echo "${PIPESTATUS[0]}" >"$work/$name.rc"
}

# The measurements first (their time is known), then the tests in what is left of the budget.
part bench_train 80 sh -c '"$@" >"$0"' "$work/bench_train.json" \
  "${cli[@]}" benchmark --arch resnet50 -b 256 --steps 10 --warmup 3 --only train --json
part jpegs 45 "$PY" -m tests.gpu.check jpegs "$work/jpegs" --unique 256 --train 2048 --val 256
part bench_e2e 80 sh -c '"$@" >"$0"' "$work/bench_e2e.json" \
  "${cli[@]}" benchmark "$work/jpegs" --arch resnet50 -b 256 --steps 4 --warmup 2 --only e2e --json
for how in workers device; do
  extra=()
  [[ $how == device ]] && extra=(--decode-on-device)
  part "train_$how" 60 "${cli[@]}" train "$work/jpegs" -a resnet50 -b 256 --epochs 1 -p 2 ${extra[@]+"${extra[@]}"} \
    --output-dir "$work/train_$how"
done
rm -rf "$work/jpegs" "$work"/train_*/*.pth.tar  # 0.5 GB the tests can use

# Out of time, the tests get SIGINT: pytest (or the plain runner) stops and still counts what ran.
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  echo pytest >"$work/tests.runner"
  part tests 420 "$PY" -m pytest tests/gpu -m cuda -q -rs --durations=12 -p no:cacheprovider --confcutdir=tests/gpu
else
  echo "python3 -m tests.gpu, without pytest" >"$work/tests.runner"
  part tests 420 "$PY" -m tests.gpu
fi

printf '%dm %02ds\n' $((SECONDS / 60)) $((SECONDS % 60)) >"$work/elapsed"
"$PY" -m tests.gpu.check summary "$work"
status=$?
if ((status != 0)) && [[ $keep != 1 ]]; then
  keep=1
  echo "gpu-check: the logs are kept in $work"
fi
exit "$status"
