"""Time to accuracy: how much sooner a fast recipe (FFCV's choices scaled down: progressive resizing,
evaluation above the training size, label smoothing, warmup and linear decay; or a short budget of them,
or one at a lower resolution throughout) reaches the top-1 that the reference recipe ends with.

On a sample of Fashion-MNIST (Debian's `dataset-fashion-mnist`, or `--fashion-mnist DIR` holding the four
`*-idx?-ubyte.gz` files) upscaled to 96 px, where resizing matters, with a small ResNet that two CPU cores
train in minutes (`small_resnet` below: torchvision's ResNet layout at a quarter of ResNet-18's width, one
block a stage). For each seed it runs the reference recipe, then the fast one (the order alternates from
seed to seed), on the same machine in the same session, and reads each run's metrics.jsonl:

- target: the reference's val top-1 at its last epoch, its result;
- the reference's time to it: wall time from its launch to its end (and the CPU time of its processes);
- the fast recipe's time to it: wall (and CPU) time from its launch to its first epoch at or above it, or,
  when none is, its whole run's and how far below it ended.

CPU time is read from /proc as each epoch ends: on a shared machine it is the cost that other users' load
does not stretch. It prints a line per seed and the ratios of the summed times, and draws both recipes'
curves along time with `imagenet-cli plot --x-axis time` into OUT/curves.png. With the defaults: 27.5
minutes on 2 busy CPU cores; with `--fast-recipe low-resolution --fast-epochs 5`, about 3 minutes idle.

    .venv/bin/python scripts/time_to_accuracy.py [--seeds 0 1 2] [--out DIR] [--fashion-mnist DIR]
        [--fast-recipe budgeted --fast-epochs 7 | --fast-recipe low-resolution --fast-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

SIZE = 96  # the pictures (28 px) upscaled to this: the size the reference trains and both evaluate at
BATCH = "64"
EPOCHS = 9
# The reference recipe (the reference script's defaults: SGD, momentum 0.9, weight decay 1e-4, the LR ÷10 at
# a third and two thirds of the run: its 90 epochs' 30 and 60, scaled to these 9) at the stored size, its LR
# scaled to the batch by Goyal et al.'s linear rule, as the reference's own 0.1 per 256 is.
REFERENCE = ("--lr", "0.025", "--train-crop-size", str(SIZE))  # and --lr-step-size: a third of its epochs
# The fast recipe: FFCV's rn18/rn50 configurations (libffcv/ffcv-imagenet) scaled to this problem. A low
# resolution crop early, rising to 80 px (FFCV: 160 px rising to 192), evaluated at the reference's 96 px,
# above the last training size (FFCV validates at 256; Touvron et al., "Fixing the train-test resolution
# discrepancy", 2019). It rises over epochs 2 to 6 of 9 rather than FFCV's 70% to 85%: in trial runs here
# (seed 0, 8 epochs) a rise at the end cost accuracy (64 px to the last epoch, then 80: 77.6% fell to 76.0%;
# 48 to 80 over epochs 2 to 6: 78.4%). The LR up for the first ninth of the run from 1e-4 of its peak and
# then straight down to 0 (FFCV's "cyclic": a peak at epoch 2 of 16), the peak FFCV's 0.5 per 1024 scaled to
# the batch; label smoothing 0.1; no weight decay on BatchNorm and 5e-5 elsewhere (FFCV's rn18).
SCHEDULE = (
    "--lr-scheduler", "linear", "--lr-warmup-epochs", "1", "--lr-warmup-decay", "0.0001",
    "--norm-weight-decay", "0", "--weight-decay", "0.00005",
)  # fmt: skip


def evaluated_at(crop: int) -> tuple[str, ...]:
    """Validation's centre crop of `crop` px from pictures resized to crop / 0.875, the reference's ratio."""
    return ("--val-resize-size", str(round(crop / 0.875)), "--val-crop-size", str(crop))


FAST = (*SCHEDULE, *evaluated_at(SIZE), "--lr", "0.03", "--label-smoothing", "0.1", "--progressive-resize", "48:80",
        "--progressive-resize-epochs", "2:6")  # fmt: skip
# `--fast-recipe budgeted`: the best short budget of a search on seed 0 (README: "Shorter budgets"): the same
# warmup and linear decay, with crops rising from 64 px to the evaluation's 96 px one step an epoch up to the
# last, at least a quarter of the picture (crop scale 0.25-1: low resolution already loses detail, and FFCV's
# 8% crops of 48 px pictures left too little), LR 0.04, no label smoothing; its `--progressive-resize-epochs`
# follow `--fast-epochs`.
BUDGETED = (*SCHEDULE, *evaluated_at(SIZE), "--lr", "0.04", "--crop-scale", "0.25", "1",
            "--progressive-resize", "64:96")  # fmt: skip
# `--fast-recipe low-resolution`: the budgeted recipe at 64 px throughout, trained and evaluated there. These
# pictures hold 28 px of detail, so 96 px adds none, and this small network (its receptive field fixed in
# pixels) scored higher at 64 px than at 96 (README: "Time to accuracy"). It evaluates at 64 px, not above
# its training size as FixRes suggests: off multiples of its stride of 32 it scored far lower here (a model
# trained at 64 px: 77.2% at 64, 53.6% at 80, 72.5% at 96, 48.3% at 112).
LOW_RESOLUTION = (*SCHEDULE, *evaluated_at(64), "--lr", "0.04", "--crop-scale", "0.25", "1", "--train-crop-size", "64")


def fast_recipe(name: str, epochs: int) -> tuple[str, ...]:
    if name == "ffcv":
        return FAST
    if name == "low-resolution":
        return LOW_RESOLUTION
    return (*BUDGETED, "--progressive-resize-epochs", f"1:{max(1, epochs - 1)}")


class Block(nn.Module):
    """ResNet's basic block: two 3x3 convolutions and a shortcut (a 1x1 projection where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(num_classes: int = 10) -> nn.Module:
    """ResNet-18's layout (7x7 stem, max pool, four stages, global pooling) at a quarter of its width and
    one block a stage: any input size, as progressive resizing needs."""
    widths = (16, 32, 64, 128)
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
    ]  # fmt: skip
    for stage, width in enumerate(widths):
        layers.append(Block(widths[max(stage - 1, 0)], width, 1 if stage == 0 else 2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)]
    return nn.Sequential(*layers)


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a process and all its descendants, read from /proc (Linux): on a shared
    machine, what a run costs, which other users' load does not stretch as it stretches wall time."""
    ticks, parent, spent = os.sysconf("SC_CLK_TCK"), {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        parent[int(entry)] = int(fields[1])
        spent[int(entry)] = sum(int(f) for f in fields[11:15]) / ticks  # utime, stime, and of waited-for children
    family, total = {root}, 0.0
    for pid in sorted(spent):  # a child's pid may be lower than its parent's: walk up from each instead
        ancestor = pid
        while ancestor not in family and ancestor in parent and ancestor != parent[ancestor]:
            ancestor = parent[ancestor]
        if ancestor in family:
            family.add(pid)
            total += spent[pid]
    return total


def train(data: Path, out: Path, recipe: tuple[str, ...], epochs: int, seed: int) -> list[dict[str, Any]]:
    """One run of the real command line; its epoch lines, each with `wall` (seconds from launch to the line)
    and `cpu` (CPU seconds of the run's processes by then, read as the line appears)."""
    command = [sys.executable, "-m", "imagenet_cli", "train", str(data), "--arch", f"{Path(__file__).resolve()}:small_resnet",
               "--epochs", str(epochs), "-b", BATCH, "--seed", str(seed), "-j", "1", "-q", "--output-dir", str(out),
               *recipe]  # fmt: skip
    # One compute thread a run: on a shared 2-core machine two threads stall at every barrier whenever another
    # process holds the other core (measured: a small ResNet ran 3 to 20 times slower with 2 threads than 1).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    launched, cpu = time.time(), []
    with subprocess.Popen(command, env=env) as process:
        while process.poll() is None:
            time.sleep(0.25)
            while len(cpu) < len(_epoch_lines(out)):
                cpu.append(cpu_seconds(process.pid))
    if process.returncode:
        raise SystemExit(f"the run in {out} failed (exit {process.returncode})")
    lines = _epoch_lines(out)
    return [{**line, "wall": line["time"] - launched, "cpu": used} for line, used in zip(lines, cpu, strict=False)]


def _epoch_lines(out: Path) -> list[dict[str, Any]]:
    path, found = out / "metrics.jsonl", []
    for text in path.read_text().splitlines() if path.exists() else []:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # the line being written
            break
        if line["type"] == "epoch":
            found.append(line)
    return found


def first_reaching(epochs: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first epoch whose val top-1 reached `target`."""
    return next((line for line in epochs if line["val_acc1"] >= target), None)


def compare(data: Path, out: Path, args: argparse.Namespace) -> None:
    """Both recipes on each seed, alternating which goes first; a line per seed, then the totals. The
    reference's time is its whole run, whose result the target is (the first epoch at or above that top-1
    is printed too: a flat stretch of the reference may pass it earlier, by chance of the epoch)."""
    steps = ("--lr-step-size", str(max(1, args.reference_epochs // 3)))
    fast = fast_recipe(args.fast_recipe, args.fast_epochs)
    runs = {"reference": ((*REFERENCE, *steps), args.reference_epochs), "fast": (fast, args.fast_epochs)}
    spent: dict[str, list[tuple[float, float]]] = {"reference": [], "fast": []}
    for n, seed in enumerate(args.seeds):
        order = list(runs) if n % 2 == 0 else list(reversed(runs))
        results = {name: train(data, out / f"{name}-{seed}", *runs[name], seed) for name in order}
        end, target = results["reference"][-1], results["reference"][-1]["val_acc1"]
        earliest, fast = (first_reaching(results[name], target) for name in ("reference", "fast"))
        assert earliest is not None  # its last epoch reached it
        best = max(line["val_acc1"] for line in results["fast"])
        said = (
            f"seed {seed}: reference {target:.2f}% at its end, {end['wall']:.0f} s ({end['cpu']:.0f} CPU s; first "
            f"passed at epoch {earliest['epoch']}, {earliest['wall']:.0f} s); "
        )
        if fast is None:
            last = results["fast"][-1]
            print(said + f"fast never reached it: it ended {target - last['val_acc1']:.2f} points below "
                  f"({last['val_acc1']:.2f}%, best {best:.2f}%) after {last['wall']:.0f} s ({last['cpu']:.0f} CPU s: "
                  f"{end['wall'] / last['wall']:.2f}x less wall time, {end['cpu'] / last['cpu']:.2f}x less CPU time "
                  "than the reference's whole run)", flush=True)  # fmt: skip
            continue
        spent["reference"].append((end["wall"], end["cpu"]))
        spent["fast"].append((fast["wall"], fast["cpu"]))
        print(said + f"fast reached it at epoch {fast['epoch']}, {fast['wall']:.0f} s ({fast['cpu']:.0f} CPU s): "
              f"{end['wall'] / fast['wall']:.2f}x less wall time, {end['cpu'] / fast['cpu']:.2f}x less CPU time; "
              f"fast's best {best:.2f}%", flush=True)  # fmt: skip
    if not spent["fast"]:
        return
    wall, cpu = ({name: sum(t[i] for t in pairs) for name, pairs in spent.items()} for i in (0, 1))
    print(f"over the {len(spent['fast'])} of {len(args.seeds)} seeds where fast reached the reference's final top-1: "
          f"{wall['reference'] / wall['fast']:.2f}x less wall time ({wall['reference']:.0f} s against {wall['fast']:.0f} s "
          f"in all), {cpu['reference'] / cpu['fast']:.2f}x less CPU time ({cpu['reference']:.0f} against "
          f"{cpu['fast']:.0f} CPU s); load average {os.getloadavg()[0]:.1f} at the end")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reference-epochs", type=int, default=EPOCHS)
    parser.add_argument("--fast-epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--fast-recipe",
        choices=("ffcv", "budgeted", "low-resolution"),
        default="ffcv",
        help="see FAST, BUDGETED and LOW_RESOLUTION",
    )
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("time-to-accuracy"), help="where the runs and plot go")
    parser.add_argument("--fashion-mnist", type=Path, metavar="DIR", help="default: Debian's package's files")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # here, not at the top: the runs import this file for its model
    from compare_recipes import FASHION_MNIST, write_fashion_mnist

    out = args.out.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists: pass another --out")
    data = write_fashion_mnist(
        args.fashion_mnist or FASHION_MNIST, out / "fashion-mnist", args.train_per_class, args.val_per_class, SIZE
    )
    print(f"Fashion-MNIST, {args.train_per_class * 10} train / {args.val_per_class * 10} val at {SIZE} px; "
          f"small_resnet, batch {BATCH}; reference {args.reference_epochs} epochs, fast ({args.fast_recipe}) {args.fast_epochs}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    compare(data, out, args)
    run_dirs = [str(out / f"{name}-{seed}") for seed in args.seeds for name in ("reference", "fast")]
    subprocess.run(
        [sys.executable, "-m", "imagenet_cli", "plot", *run_dirs, "-o", str(out / "curves.png"), "--x-axis", "time"],
        check=True,
    )


if __name__ == "__main__":
    main()
