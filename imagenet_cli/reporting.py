"""What the user sees: live progress on a terminal, plain lines in logs, summaries and results.

Only the main rank reports; the others get a `Reporter` that says nothing. The engine never prints.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from .engine import EpochResult, Metrics


class Reporter:
    """Says nothing: the interface, and what non-main ranks and `--quiet` runs use."""

    def message(self, text: str) -> None: ...
    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None: ...
    def phase_advance(self, step: int) -> None: ...
    def phase_update(self, step: int, metrics: Metrics) -> None: ...
    def phase_end(self, metrics: Metrics) -> None: ...
    def epoch_end(self, result: EpochResult) -> None: ...
    def run_end(self, best_acc1: float, output_dir: str) -> None: ...
    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if as_json:  # scripts asked for it: printed even when everything else is quiet
            print(json.dumps(result), flush=True)


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; on anything else (CI, nohup, SLURM logs) plain lines at the
    print interval, without control characters."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.history: list[EpochResult] = []
        self._progress: Progress | None = None
        self._task: Any = None
        self._phase = ("train", 0, 0)
        self._phase_start = 0.0
        self._phase_done = 0

    def message(self, text: str) -> None:
        self._print(text)

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        self._phase, self._phase_start, self._phase_done = (phase, epoch, total), time.perf_counter(), done
        if not self.live:
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

    def phase_update(self, step: int, metrics: Metrics) -> None:
        stats = f"loss {metrics.loss:.4f}  top-1 {metrics.acc1:5.1f}%  {metrics.images_per_second:,.0f} img/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
            return
        phase, epoch, total = self._phase
        elapsed = time.perf_counter() - self._phase_start
        eta = elapsed / max(1, step - self._phase_done) * (total - step)
        label = f"Epoch: [{epoch}]" if phase == "train" else f"Test: [{epoch}]"
        width = len(str(total))
        self._print(f"{label}[{step:>{width}}/{total}]  {stats}  eta {_duration(eta)}")

    def phase_end(self, metrics: Metrics) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_end(self, result: EpochResult) -> None:
        self.history.append(result)
        marks = " (best)" if result.is_best else ""
        saved = f", saved {result.saved}" if result.saved else ""
        self._print(
            f"epoch {result.epoch}: train loss {result.train.loss:.4f} top-1 {result.train.acc1:.2f}% | "
            f"val loss {result.val.loss:.4f} top-1 {result.val.acc1:.2f}% top-5 {result.val.acc5:.2f}%{marks} | "
            f"lr {result.lr:.4g} | {result.train.images_per_second:,.0f} img/s | "
            f"{_duration(result.train.seconds + result.val.seconds)}{saved}"
        )

    def run_end(self, best_acc1: float, output_dir: str) -> None:
        if not self.history:
            return
        table = Table(title="Training summary", title_justify="left")
        for column in ("epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5", "lr", "time"):
            table.add_column(column, justify="right")
        for r in self.history:
            table.add_row(
                f"{r.epoch}{' *' if r.is_best else ''}", f"{r.train.loss:.4f}", f"{r.train.acc1:.2f}",
                f"{r.val.loss:.4f}", f"{r.val.acc1:.2f}", f"{r.val.acc5:.2f}", f"{r.lr:.4g}",
                _duration(r.train.seconds + r.val.seconds),
            )  # fmt: skip
        self.console.print(table)
        self._print(f"best top-1 {best_acc1:.2f}%; checkpoints in {output_dir}")

    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if as_json:
            super().evaluation(result, as_json)
            return
        table = Table(title=f"Evaluation of {result['checkpoint']}", title_justify="left")
        for column in ("images", "top-1", "top-5", "loss", "img/s"):
            table.add_column(column, justify="right")
        table.add_row(
            str(result["images"]), f"{result['acc1']:.2f}%", f"{result['acc5']:.2f}%",
            f"{result['loss']:.4f}", f"{result['images_per_second']:,.0f}",
        )  # fmt: skip
        self.console.print(table)
        self.console.print(_per_class_table(result["per_class"]))

    def _print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)


def _per_class_table(rows: list[dict[str, Any]], shown: int = 20) -> Table:
    """Per-class top-1, worst first; with many classes, the worst and best few."""
    rows = sorted((r for r in rows if r["images"]), key=lambda r: (r["acc1"], r["class"]))
    title = "Per-class top-1"
    if len(rows) > shown:
        rows = rows[: shown // 2] + rows[-shown // 2 :]
        title += f" (the {shown // 2} worst and best classes)"
    table = Table(title=title, title_justify="left")
    for column, justify in (("class", "left"), ("images", "right"), ("top-1", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["class"], str(row["images"]), f"{row['acc1']:.1f}%")
    return table


def print_inspection(summary: dict[str, Any], as_json: bool) -> None:
    """`inspect`: a two-column table, or the same facts as one JSON object."""
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    table = Table(title=f"{summary['path']}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if key == "path" or value is None:
            continue
        if key == "class_names":
            value = ", ".join(value[:10]) + (f" … ({len(value)} in all)" if len(value) > 10 else "")
        elif key == "versions":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key in ("parameters", "size_bytes"):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), str(value))
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def print_benchmark(result: dict[str, Any], as_json: bool) -> None:
    """`benchmark`: one row per measurement, ours beside the baseline and their ratio."""
    if as_json:
        print(json.dumps(result), flush=True)
        return
    machine = result["machine"]
    title = (
        f"{machine['device_name']} ({machine['device']}, {machine['cpu_cores']} CPU cores), "
        f"torch {machine['torch']}" + (f"; ours: {result['compute']}" if "compute" in result else "")
    )
    table = Table(title=title, title_justify="left")
    for column, justify in (("part", "left"), ("what", "left"), ("ours img/s", "right"),
                            ("baseline img/s", "right"), ("ours / baseline", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result["results"]:
        table.add_row(
            row["part"], row["what"], f"{row['ours_images_per_second']:,.1f}",
            f"{row['baseline_images_per_second']:,.1f}", f"{row['ratio']:.2f}x",
        )  # fmt: skip
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def print_data_check(report: dict[str, Any], as_json: bool) -> None:
    """`check-data`: what was read, what could not be, and what the pictures are like."""
    if as_json:
        print(json.dumps(report), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    per_split = ", ".join(f"{split} {n}" for split, n in report["per_split"].items())
    console.print(f"checked {report['files']} images ({per_split}): {len(report['unreadable'])} unreadable")
    if report["unreadable"]:
        table = Table(title="Unreadable images", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for row in report["unreadable"][:50]:
            table.add_row(row["file"], row["problem"])
        console.print(table)
    for title, key in (("Colour modes", "modes"), ("Formats", "formats"), ("Shorter side", "shorter_side")):
        table = Table(title=title, title_justify="left")
        table.add_column(title.lower())
        table.add_column("images", justify="right")
        for name, count in report[key].items():
            table.add_row(str(name), f"{count:,}")
        console.print(table)


def make_reporter(is_main: bool, quiet: bool, to_stderr: bool) -> Reporter:
    """The main rank talks (to stderr when stdout is reserved for `--json`); every other rank is quiet."""
    if not is_main or quiet:
        return Reporter()
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream)
    if not console.is_terminal:  # logs have no width; don't squeeze tables into 80 columns
        console = Console(file=stream, width=120)
    return ConsoleReporter(console)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
