"""The run directory's records: `config.json` (how to run it again) and `metrics.jsonl` (what happened).

Both are written by the main rank only. `metrics.jsonl` gets one JSON object per line: a "train" line at
each print interval and an "epoch" line after each validation, so a notebook reads it with
`pandas.read_json(path, lines=True)` and `imagenet-cli plot` draws it. A resumed run first drops the lines
written after the checkpoint it continues from, so the file tells one consistent story.
"""

from __future__ import annotations

import errno
import faulthandler
import importlib.util
import json
import os
import resource
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from ..config import RunConfig, to_options
from ..core.atomicfile import write_text
from ..core.errors import UserError
from . import curves
from .live import Reporter
from .plots import CURVES_NAME, METRICS_NAME, training_curves

if TYPE_CHECKING:
    from .metrics import EpochResult, Metrics

CONFIG_NAME = "config.json"


def write_config(cfg: RunConfig) -> str:
    """`config.json`: every option of the run by its flag name, a valid `--config` file, so
    `imagenet-cli train --config RUN/config.json --output-dir NEW` trains the same run again."""
    path = os.path.join(cfg.output_dir, CONFIG_NAME)
    write_text(path, json.dumps(to_options(cfg), indent=2, sort_keys=True) + "\n")
    return path


def existing_records(output_dir: str) -> list[str]:
    """The names of the run records already in `output_dir`: what a run starting there would overwrite."""
    return [name for name in (CONFIG_NAME, METRICS_NAME) if os.path.lexists(os.path.join(output_dir, name))]


def records_same_options(output_dir: str, cfg: RunConfig) -> bool:
    """Whether OUTPUT_DIR/config.json holds exactly the options this run would write there: the same run
    started again, not another one."""
    try:
        with open(os.path.join(output_dir, CONFIG_NAME)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return recorded == json.loads(json.dumps(to_options(cfg)))


def worker_log_path(log_dir: str, rank: int) -> str:
    return os.path.join(log_dir, f"workerlog.{rank}")


def refuse_unsafe_log(path: str) -> None:
    """Before any process starts: a worker log that is already there must be a plain file of its own
    (see `open_worker_log`), so a planted link costs seconds, not a spawned run."""
    with suppress(FileNotFoundError):
        _refuse_if_unsafe(path, os.lstat(path))


def open_worker_log(path: str) -> IO[str]:
    """LOG_DIR/workerlog.RANK, emptied and line-buffered; never through a symbolic link (a planted
    `workerlog.0 -> ~/notes` would empty the link's target) and never if it is anything but a plain file
    with one name (a FIFO, a device, a directory, a hard link to another file): a one-line error instead.
    The checks are made on the opened file itself, so nothing can swap the name in between."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_if_unsafe(path, os.lstat(path))
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO nobody reads, a directory
            raise UserError(f"--log-dir: {path} is not a regular file; remove it or choose another --log-dir") from exc
        raise UserError(f"--log-dir: cannot write {path}: {exc.strerror}") from exc
    try:
        _refuse_if_unsafe(path, os.fstat(fd))
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        return os.fdopen(fd, "w", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def _refuse_if_unsafe(path: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link (a log is never written through one)"
    elif not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_nlink > 1:
        problem = "is a hard link to another file"
    else:
        return
    raise UserError(f"--log-dir: {path} {problem}; remove it or choose another --log-dir")


@contextmanager
def rank_log(log_dir: str | None, rank: int, redirect: bool) -> Iterator[IO[str] | None]:
    """LOG_DIR/workerlog.RANK, line-buffered (None without --log-dir). With `redirect` (every rank but
    the main one) the process's own stdout and stderr go there too: warnings, NCCL's messages and
    crashes land in that rank's file instead of interleaving on the terminal."""
    if not log_dir:
        yield None
        return
    os.makedirs(log_dir, exist_ok=True)
    with open_worker_log(worker_log_path(log_dir, rank)) as log:
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
    """OUTPUT_DIR/curves.png at the end of a run, when matplotlib is there; a hint when it is not. Drawn
    here only when the run's drawer (`curves.Drawer`, waited for by `MetricsFile.run_end`) left none."""
    if not can_draw():
        return f'no {CURVES_NAME}: plotting needs matplotlib (pip install "imagenet-cli[plot]")'
    path = Path(output_dir) / CURVES_NAME
    notes = [] if curves.is_fresh(output_dir) else training_curves([Path(output_dir)], path)
    return "\n".join([*notes, f"curves in {path}"])


def can_draw() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


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
    """Appends to `metrics.jsonl`; opened at the first training phase, which says where the run starts.
    Given the run's `final_epoch`, it has curves.png drawn beside the run's end (`curves.Drawer`)."""

    def __init__(self, output_dir: str, device: torch.device, final_epoch: int | None = None) -> None:
        self.output_dir, self.path = output_dir, os.path.join(output_dir, METRICS_NAME)
        self.device, self.final_epoch = device, final_epoch
        self._file: IO[str] | None = None
        self._phase: tuple[str, int, int] = ("train", 0, 0)
        self._drawer: curves.Drawer | None = None

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase = (phase, epoch, total)
        if phase == "train" and self._file is None:  # the run's restore trimmed it to where it continues
            self._file = open(self.path, "a")  # noqa: SIM115 (open for the whole run, closed by close())
        if phase == "val" and epoch == self.final_epoch and self._drawer is None and can_draw():
            self._drawer = curves.Drawer(self.output_dir)  # imports matplotlib while the run validates

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
        train, val, ema = result.train, result.val, result.ema
        ema_figures = {"ema_val_loss": ema.loss, "ema_val_acc1": ema.acc1, "ema_val_acc5": ema.acc5} if ema else {}
        self._write(
            {"type": "epoch", "epoch": result.epoch, "train_loss": train.loss, "train_acc1": train.acc1,
             "train_acc5": train.acc5, "val_loss": val.loss, "val_acc1": val.acc1, "val_acc5": val.acc5,
             "lr": result.lr, "best_acc1": result.best_acc1, "is_best": result.is_best, "saved": result.saved,
             "seconds": train.seconds + val.seconds, "images_per_second": train.images_per_second,
             "data_wait": train.data_wait, "train_size": train.image_size, "memory_mb": memory_mb(self.device),
             **ema_figures}
        )  # fmt: skip
        if result.epoch == self.final_epoch and self._drawer is not None:
            self._drawer.draw()

    def run_end(self, best_acc1: float, output_dir: str) -> None:
        if self._drawer is not None and self._drawer.told:
            self._drawer.finish()
            self._drawer = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._drawer is not None:
            self._drawer.cancel()
            self._drawer = None

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({**line, "time": round(time.time(), 3)}) + "\n")
        self._file.flush()  # a crashed run keeps every line written before the crash


class TensorBoard(Reporter):
    """The same figures as `metrics.jsonl`, as TensorBoard scalars in OUTPUT_DIR/tensorboard; the
    global step is the number of batches trained since the start of the run. Opened at the first training
    phase, which says where the run starts: like `metrics.jsonl`, the event files then drop what was
    written after that point, so a resumed run's replayed steps are not drawn twice."""

    def __init__(self, output_dir: str) -> None:
        self.directory = os.path.join(output_dir, "tensorboard")
        self.writer: Any = None
        self._phase: tuple[str, int, int] = ("train", 0, 0)
        self._steps_per_epoch = 0

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase = (phase, epoch, total)
        if phase == "train":
            self._steps_per_epoch = total
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard discards earlier events from purge_step on: the steps this run trains again
                self.writer = SummaryWriter(self.directory, purge_step=epoch * total + done + 1)

    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None:
        phase, epoch, total = self._phase
        if phase != "train" or self.writer is None:
            return
        at = epoch * total + step
        for name, value in (("loss", metrics.loss), ("top1", metrics.acc1), ("top5", metrics.acc5),
                            ("images_per_second", metrics.images_per_second), ("data_wait", metrics.data_wait),
                            ("lr", lr)):  # fmt: skip
            if value is not None:
                self.writer.add_scalar(f"train/{name}", value, at)

    def epoch_end(self, result: EpochResult) -> None:
        if self.writer is None:
            return
        at = (result.epoch + 1) * self._steps_per_epoch
        splits = [("train", result.train), ("val", result.val), *([("ema_val", result.ema)] if result.ema else [])]
        for split, metrics in splits:
            for name, value in (("loss", metrics.loss), ("top1", metrics.acc1), ("top5", metrics.acc5)):
                self.writer.add_scalar(f"epoch/{split}_{name}", value, at)
        self.writer.add_scalar("epoch/lr", result.lr, at)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
