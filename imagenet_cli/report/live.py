"""What the user sees: live progress on a terminal, plain lines in logs, summaries and results.

Only the main rank reports; the others get a `Reporter` that says nothing. The engine never prints.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core.text import printable
from .tables import duration, evaluation_tables, training_summary

if TYPE_CHECKING:
    from .metrics import EpochResult, Metrics


class Reporter:
    """Says nothing: the interface, and what non-main ranks and `--quiet` runs use."""

    def message(self, text: str) -> None: ...
    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None: ...
    def phase_advance(self, step: int) -> None: ...
    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None: ...
    def phase_end(self, metrics: Metrics) -> None: ...
    def epoch_end(self, result: EpochResult) -> None: ...
    def run_end(self, best_acc1: float, output_dir: str) -> None: ...
    def close(self) -> None: ...
    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if as_json:  # scripts asked for it: printed even when everything else is quiet
            print(json.dumps(result), flush=True)


def _to_each(name: str) -> Callable[..., None]:
    def method(self: Reporters, *args: Any, **kwargs: Any) -> None:
        for reporter in self.reporters:
            getattr(reporter, name)(*args, **kwargs)

    return method


class Reporters(Reporter):
    """Several reporters heard as one: the console, the metrics file, TensorBoard, a rank's log."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    message = _to_each("message")
    phase_start = _to_each("phase_start")
    phase_advance = _to_each("phase_advance")
    phase_update = _to_each("phase_update")
    phase_end = _to_each("phase_end")
    epoch_end = _to_each("epoch_end")
    run_end = _to_each("run_end")
    close = _to_each("close")

    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if self.reporters:
            self.reporters[0].evaluation(result, as_json)  # the console's: printed once


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; on anything else (CI, nohup, SLURM logs) plain lines at the
    print interval, without control characters."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console, self.verbose = console, verbose
        self.history: list[EpochResult] = []
        self._progress: Progress | None = None
        self._task: Any = None
        self._phase, self._phase_start, self._phase_done = ("train", 0, 0), 0.0, 0

    def message(self, text: str) -> None:
        self._print(text)

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase, self._phase_start, self._phase_done = (phase, epoch, total), time.perf_counter(), done
        if not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"epoch {epoch} {phase}", total=total, completed=done, stats="")

    def phase_advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None:
        stats = f"loss {metrics.loss:.4f}  top-1 {metrics.acc1:5.1f}%  {metrics.images_per_second:,.0f} img/s"
        if self.verbose:
            stats += f"  data wait {100 * metrics.data_wait:.0f}%" + (f"  lr {lr:.4g}" if lr is not None else "")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
            return
        phase, epoch, total = self._phase
        elapsed = time.perf_counter() - self._phase_start
        eta = elapsed / max(1, step - self._phase_done) * (total - step)
        label = {"train": "Epoch", "val": "Test", "ema": "Test (EMA)"}.get(phase, phase)
        self._print(f"{label}: [{epoch}][{step:>{len(str(total))}}/{total}]  {stats}  eta {duration(eta)}")

    def phase_end(self, metrics: Metrics) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_end(self, result: EpochResult) -> None:
        self.history.append(result)
        marks = " (new best)" if result.is_best else f" (best {result.best_acc1:.2f}%)"
        saved = f", saved {result.saved}" if result.saved else ""
        ema = f" | ema top-1 {result.ema.acc1:.2f}% top-5 {result.ema.acc5:.2f}%" if result.ema else ""
        self._print(
            f"epoch {result.epoch}: train loss {result.train.loss:.4f} top-1 {result.train.acc1:.2f}% | "
            f"val loss {result.val.loss:.4f} top-1 {result.val.acc1:.2f}% top-5 {result.val.acc5:.2f}%{ema}{marks} | "
            f"lr {result.lr:.4g} | {result.train.images_per_second:,.0f} img/s | "
            f"{duration(result.train.seconds + result.val.seconds)}{saved}"
        )

    def run_end(self, best_acc1: float, output_dir: str) -> None:
        if not self.history:
            return
        self.console.print(training_summary(self.history))
        self._print(f"best top-1 {best_acc1:.2f}%; checkpoints in {output_dir}")

    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if as_json:
            super().evaluation(result, as_json)
            return
        for table in evaluation_tables(result):
            self.console.print(table)
        if result.get("confusion_plot"):
            self._print(f"confusion matrix drawn in {printable(result['confusion_plot'])}")

    def _print(self, text: str) -> None:
        """Plain lines: never markup, and no control character of a path or name reaches the terminal."""
        self.console.print(printable(text, keep_lines=True), soft_wrap=True, highlight=False, markup=False)


def make_reporter(is_main: bool, quiet: bool, to_stderr: bool, verbose: bool = False) -> Reporter:
    """The main rank talks (to stderr when stdout is reserved for `--json`); every other rank is quiet."""
    if not is_main or quiet:
        return Reporter()
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream)
    if not console.is_terminal:  # logs have no width; don't squeeze tables into 80 columns
        console = Console(file=stream, width=120)
    return ConsoleReporter(console, verbose)


def file_reporter(stream: IO[str]) -> Reporter:
    """Plain lines into a log file, at the print interval, whatever the rank."""
    return ConsoleReporter(Console(file=stream, width=120, color_system=None), verbose=True)
