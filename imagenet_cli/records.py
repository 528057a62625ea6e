"""The run directory's records: `config.json` (how to run it again) and `metrics.jsonl` (what happened).

Both are written by the main rank only. `metrics.jsonl` gets one JSON object per line: a "train" line at
each print interval and an "epoch" line after each validation, so a notebook reads it with
`pandas.read_json(path, lines=True)` and `imagenet-cli plot` draws it. A resumed run first drops the lines
written after the checkpoint it continues from, so the file tells one consistent story.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import torch

from .atomicfile import write_text
from .config import RunConfig, to_options
from .reporting import Reporter

if TYPE_CHECKING:
    from .engine import EpochResult, Metrics

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


def write_config(cfg: RunConfig) -> str:
    """`config.json`: every option of the run by its flag name, a valid `--config` file, so
    `imagenet-cli train --config RUN/config.json --output-dir NEW` trains the same run again."""
    path = os.path.join(cfg.output_dir, CONFIG_NAME)
    write_text(path, json.dumps(to_options(cfg), indent=2, sort_keys=True) + "\n")
    return path


@contextmanager
def rank_log(log_dir: str | None, rank: int, redirect: bool) -> Iterator[IO[str] | None]:
    """LOG_DIR/workerlog.RANK, line-buffered (None without --log-dir). With `redirect` (every rank but
    the main one) the process's own stdout and stderr go there too: warnings, NCCL's messages and
    crashes land in that rank's file instead of interleaving on the terminal."""
    if not log_dir:
        yield None
        return
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, f"workerlog.{rank}"), "w", buffering=1) as log:
        if redirect:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        faulthandler.enable(log)  # a segfault, or a hang ended by a signal, still leaves a trace
        try:
            yield log
        finally:
            faulthandler.disable()


def draw_curves(output_dir: str) -> str:
    """OUTPUT_DIR/curves.png at the end of a run, when matplotlib is there; a hint when it is not."""
    if importlib.util.find_spec("matplotlib") is None:
        return 'no curves.png: plotting needs matplotlib (pip install "imagenet-cli[plot]")'
    from pathlib import Path

    from .plots import training_curves

    path = Path(output_dir) / "curves.png"
    notes = training_curves([Path(output_dir)], path)
    return "\n".join([*notes, f"curves in {path}"])


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: the device's allocations on a GPU, the process's resident size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _position(line: dict[str, Any]) -> tuple[int, int]:
    """Where in training a line was written: (epoch, step); an epoch's summary counts as the start of
    the next epoch, which is also where its end-of-epoch checkpoint resumes."""
    epoch = int(line.get("epoch", 0))
    if line.get("type") == "train":
        return epoch, int(line.get("step", 0))
    return epoch + 1, 0


def trim(path: str, epoch: int, step: int) -> None:
    """Keep the lines written up to (epoch, step), the point a run continues from; malformed lines
    (the tail of a run that was killed while writing) go too."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and _position(line) <= (epoch, step):
                kept.append(json.dumps(line))
    write_text(path, "".join(f"{line}\n" for line in kept))


class MetricsFile(Reporter):
    """Appends to `metrics.jsonl`; opened at the first training phase, which says where the run starts."""

    def __init__(self, output_dir: str, device: torch.device) -> None:
        self.path = os.path.join(output_dir, METRICS_NAME)
        self.device = device
        self._file: IO[str] | None = None
        self._phase: tuple[str, int, int] = ("train", 0, 0)

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase = (phase, epoch, total)
        if phase == "train" and self._file is None:
            trim(self.path, epoch, done)
            self._file = open(self.path, "a")  # noqa: SIM115 (open for the whole run, closed by close())

    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None:
        phase, epoch, total = self._phase
        if phase != "train":
            return
        self._write(
            {"type": "train", "epoch": epoch, "step": step, "steps": total, "loss": metrics.loss,
             "acc1": metrics.acc1, "acc5": metrics.acc5, "lr": lr, "images_per_second": metrics.images_per_second,
             "data_wait": metrics.data_wait, "memory_mb": memory_mb(self.device)}
        )  # fmt: skip

    def epoch_end(self, result: EpochResult) -> None:
        train, val = result.train, result.val
        self._write(
            {"type": "epoch", "epoch": result.epoch, "train_loss": train.loss, "train_acc1": train.acc1,
             "train_acc5": train.acc5, "val_loss": val.loss, "val_acc1": val.acc1, "val_acc5": val.acc5,
             "lr": result.lr, "best_acc1": result.best_acc1, "is_best": result.is_best, "saved": result.saved,
             "seconds": train.seconds + val.seconds, "images_per_second": train.images_per_second,
             "data_wait": train.data_wait, "memory_mb": memory_mb(self.device), **_ema_figures(result)}
        )  # fmt: skip

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({**line, "time": round(time.time(), 3)}) + "\n")
        self._file.flush()  # a crashed run keeps every line written before the crash


def _ema_figures(result: EpochResult) -> dict[str, float]:
    if result.ema is None:
        return {}
    return {"ema_val_loss": result.ema.loss, "ema_val_acc1": result.ema.acc1, "ema_val_acc5": result.ema.acc5}


class TensorBoard(Reporter):
    """The same figures as `metrics.jsonl`, as TensorBoard scalars in OUTPUT_DIR/tensorboard; the
    global step is the number of batches trained since the start of the run."""

    def __init__(self, output_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        self._phase: tuple[str, int, int] = ("train", 0, 0)
        self._steps_per_epoch = 0

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase = (phase, epoch, total)
        if phase == "train":
            self._steps_per_epoch = total

    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None:
        phase, epoch, total = self._phase
        if phase != "train":
            return
        at = epoch * total + step
        for name, value in (("loss", metrics.loss), ("top1", metrics.acc1), ("top5", metrics.acc5),
                            ("images_per_second", metrics.images_per_second), ("data_wait", metrics.data_wait),
                            ("lr", lr)):  # fmt: skip
            if value is not None:
                self.writer.add_scalar(f"train/{name}", value, at)

    def epoch_end(self, result: EpochResult) -> None:
        at = (result.epoch + 1) * self._steps_per_epoch
        splits = [("train", result.train), ("val", result.val), *([("ema_val", result.ema)] if result.ema else [])]
        for split, metrics in splits:
            self.writer.add_scalar(f"epoch/{split}_loss", metrics.loss, at)
            self.writer.add_scalar(f"epoch/{split}_top1", metrics.acc1, at)
            self.writer.add_scalar(f"epoch/{split}_top5", metrics.acc5, at)
        self.writer.add_scalar("epoch/lr", result.lr, at)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
