"""`benchmark --only e2e-command`: one short epoch as a user runs it, the whole command timed from start to
exit, the reference script's way against `imagenet-cli train`.

Short runs (CI jobs, smoke tests) are mostly fixed cost: imports, pre-flight, model build, loader start,
then the summary, pictures, checkpoint and teardown. Throughput figures never see those; this part does.
Each side runs as its own process (`python -m`), on the same images with the same settings, one side after
the other, alternating which goes first, over `--rounds` rounds; medians are reported, since the machine
may be shared. Both print a line after every step (`--print-freq 1`), each read here as it arrives, so a
run splits into:
- start -> first step: from starting the process to the first training step's line (imports, checks,
  model, loader start-up, the first batch and its step);
- steps: from there to the last validation step's line;
- last step -> exit: from there until the process has exited and closed its output (what a shell or CI
  job waits for: the summary, plots, checkpoints, teardown).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ..core.errors import UserError
from .pictures import write_imagenet_like

BenchmarkConfig = Any  # benchmark.BenchmarkConfig, which imports this module

PHASES = ("start_to_first_step", "steps", "last_step_to_exit", "total")
SIDES = ("reference", "ours")
TRAIN_LINE, VAL_LINE = "Epoch: [", "Test: ["  # both sides' progress lines start so
VAL_SHARE = 0.4  # generated validation images per training image: the 40 for 100


def run(cfg: BenchmarkConfig, workers: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Time both commands over `cfg.rounds` rounds; returns plain data (part of the JSON output)."""
    with tempfile.TemporaryDirectory(prefix="imagenet-cli-e2e-command-") as scratch:
        root, source = _dataset(cfg, scratch)
        what = f"{cfg.arch} b{cfg.batch_size} {cfg.image_size}px -j {workers}, one epoch of {source}"
        rounds = []
        for number in range(cfg.rounds):
            order = SIDES if number % 2 == 0 else SIDES[::-1]  # whoever went first goes second next time
            timed = {}
            for side in order:
                progress(f"e2e-command: round {number + 1} of {cfg.rounds}, {side}")
                folder = os.path.join(scratch, f"{side}-{number}")
                os.makedirs(folder)
                timed[side] = time_command(_command(side, cfg, root, workers, folder), folder, _env(cfg))
                shutil.rmtree(folder)  # checkpoints: not worth keeping, and a round's output is large
            rounds.append({side: timed[side] for side in SIDES})
    return summarise(what, rounds)


def summarise(what: str, rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per-round figures, their medians and the ratio reference / ours of the medians (above 1: ours is faster)."""
    median = {side: {p: statistics.median(r[side][p] for r in rounds) for p in PHASES} for side in SIDES}
    ratio = {p: median["reference"][p] / median["ours"][p] if median["ours"][p] else None for p in PHASES}
    return {"what": what, "rounds": rounds, "median": median, "ratio": ratio}


def _dataset(cfg: BenchmarkConfig, scratch: str) -> tuple[str, str]:
    """DATA's train/ and val/ folders, or ImageNet-like JPEGs generated for both."""
    if cfg.data is not None:
        if not os.path.isdir(os.path.join(cfg.data, "val")):
            raise UserError(f"e2e-command trains and validates: {cfg.data} has no val/ folder of class folders")
        return cfg.data, f"the images in {cfg.data}"
    val = max(1, round(cfg.images * VAL_SHARE))
    write_imagenet_like(scratch, cfg.images)
    write_imagenet_like(scratch, val, split="val", seed=1)
    return scratch, f"{cfg.images} train + {val} val generated JPEGs"


def _command(side: str, cfg: BenchmarkConfig, root: str, workers: int, folder: str) -> list[str]:
    """The same run on both sides; ours with the compute flags the benchmark was given, and its output in `folder`
    (the reference writes its checkpoints into its working directory, also `folder`)."""
    common = [root, "-a", cfg.arch, "-b", str(cfg.batch_size), "-j", str(workers), "--epochs", "1",
              "--print-freq", "1", "--image-size", str(cfg.image_size)]  # fmt: skip
    if side == "reference":
        return [sys.executable, "-m", "imagenet_cli.tools.reference_main", *common]
    compute = cfg.compute
    flags = ["--amp", compute.amp] if compute.amp != "auto" else []
    if compute.channels_last is not None:
        flags.append("--channels-last" if compute.channels_last else "--no-channels-last")
    flags += ["--compile"] * compute.compile + ["--no-accel"] * cfg.no_accel
    return [sys.executable, "-m", "imagenet_cli", "train", *common, *flags, "--output-dir", folder]


def _env(cfg: BenchmarkConfig) -> dict[str, str]:
    """This environment, with this copy of the package first on the path and unbuffered output (each line
    is read when it is printed); without a GPU for both sides under --no-accel."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    if cfg.no_accel:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def time_command(argv: list[str], cwd: str, env: dict[str, str]) -> dict[str, float]:
    """Run `argv` and time its phases (seconds) from the moments its progress lines arrive; its output is
    read as it comes, and the end is when it has exited and closed its output."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    first_step = last_step = None
    lines = {TRAIN_LINE: 0, VAL_LINE: 0}
    tail: list[str] = []
    with process:
        for line in process.stdout:
            now = time.perf_counter()
            if line.startswith(TRAIN_LINE):
                first_step = first_step or now
                lines[TRAIN_LINE] += 1
            elif line.startswith(VAL_LINE):
                last_step = now
                lines[VAL_LINE] += 1
            tail = [*tail[-19:], line.rstrip()]
        code = process.wait()
    end = time.perf_counter()
    if code != 0:
        raise UserError(f"e2e-command: `{' '.join(argv[2:5])} ...` failed (exit {code}): {_last_words(tail)}")
    if first_step is None or last_step is None or last_step < first_step:
        raise UserError(f"e2e-command: `{' '.join(argv[2:5])} ...` printed no training and validation steps")
    return {
        "start_to_first_step": first_step - start,
        "steps": last_step - first_step,
        "last_step_to_exit": end - last_step,
        "total": end - start,
        "train_steps": lines[TRAIN_LINE],  # steps seen: what the figures are the time of
        "val_steps": lines[VAL_LINE],
    }


def _last_words(tail: list[str]) -> str:
    """The line that says why a command failed: its last non-empty one."""
    return next((line.strip() for line in reversed(tail) if line.strip()), "no output")
