"""What the user sees: live progress on a terminal, plain lines in logs, summaries and results.

Only the main rank reports; the others get a `Reporter` that says nothing. The engine never prints.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .text import CLIP, clip, printable

if TYPE_CHECKING:
    from .engine import EpochResult, Metrics

__all__ = ["CLIP", "clip", "printable"]  # where other modules have always found them


def literal(value: object) -> Text:
    """`printable`, as rich text shown as written where rich would read markup and emoji codes (table
    cells, titles): a class named `[/]` or `:cat:` is a name, never a tag (a stray closing tag is an error
    in rich) nor a picture."""
    return Text(printable(value))


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


class Reporters(Reporter):
    """Several reporters heard as one: the console, the metrics file, TensorBoard, a rank's log."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def message(self, text: str) -> None:
        for r in self.reporters:
            r.message(text)

    def phase_start(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        for r in self.reporters:
            r.phase_start(phase, epoch, total, done)

    def phase_advance(self, step: int) -> None:
        for r in self.reporters:
            r.phase_advance(step)

    def phase_update(self, step: int, metrics: Metrics, lr: float | None = None) -> None:
        for r in self.reporters:
            r.phase_update(step, metrics, lr)

    def phase_end(self, metrics: Metrics) -> None:
        for r in self.reporters:
            r.phase_end(metrics)

    def epoch_end(self, result: EpochResult) -> None:
        for r in self.reporters:
            r.epoch_end(result)

    def run_end(self, best_acc1: float, output_dir: str) -> None:
        for r in self.reporters:
            r.run_end(best_acc1, output_dir)

    def close(self) -> None:
        for r in self.reporters:
            r.close()

    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if self.reporters:
            self.reporters[0].evaluation(result, as_json)  # the console's: printed once


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; on anything else (CI, nohup, SLURM logs) plain lines at the
    print interval, without control characters."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.live = console.is_terminal
        self.verbose = verbose
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
        label = f"{label}: [{epoch}]"
        width = len(str(total))
        self._print(f"{label}[{step:>{width}}/{total}]  {stats}  eta {_duration(eta)}")

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
            f"{_duration(result.train.seconds + result.val.seconds)}{saved}"
        )

    def run_end(self, best_acc1: float, output_dir: str) -> None:
        if not self.history:
            return
        table = Table(title="Training summary", title_justify="left")
        with_ema = any(r.ema for r in self.history)
        columns = ("epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5",
                   *(("ema top-1",) if with_ema else ()), "best top-1", "lr", "time", "saved")  # fmt: skip
        for column in columns:
            table.add_column(column, justify="right")
        for r in self.history:
            table.add_row(
                f"{r.epoch}{' *' if r.is_best else ''}", f"{r.train.loss:.4f}", f"{r.train.acc1:.2f}",
                f"{r.val.loss:.4f}", f"{r.val.acc1:.2f}", f"{r.val.acc5:.2f}",
                *((f"{r.ema.acc1:.2f}" if r.ema else "",) if with_ema else ()), f"{r.best_acc1:.2f}", f"{r.lr:.4g}",
                _duration(r.train.seconds + r.val.seconds), "yes" if r.saved else "",
            )  # fmt: skip
        self.console.print(table)
        self._print(f"best top-1 {best_acc1:.2f}%; checkpoints in {output_dir}")

    def evaluation(self, result: dict[str, Any], as_json: bool) -> None:
        if as_json:
            super().evaluation(result, as_json)
            return
        table = _titled(f"Evaluation of {result['checkpoint']}")
        for column in ("images", "top-1", "top-5", "loss", "img/s"):
            table.add_column(column, justify="right")
        table.add_row(
            str(result["images"]), f"{result['acc1']:.2f}%", f"{result['acc5']:.2f}%",
            f"{result['loss']:.4f}", f"{result['images_per_second']:,.0f}",
        )  # fmt: skip
        self.console.print(table)
        self.console.print(_per_class_table(result["per_class"]))
        names = [row["class"] for row in result["per_class"]]
        if len(names) <= 10:
            self.console.print(_confusion_table(result["confusion"], names))
        elif result["most_confused"]:
            self.console.print(_most_confused_table(result["most_confused"]))
        if result.get("confusion_plot"):
            self._print(f"confusion matrix drawn in {printable(result['confusion_plot'])}")

    def _print(self, text: str) -> None:
        """Plain lines: never markup, and no control character of a path or name reaches the terminal."""
        self.console.print(printable(text, keep_lines=True), soft_wrap=True, highlight=False, markup=False)


def _titled(title: str) -> Table:
    """A table at least as wide as its title, so the title is never wrapped over several lines. The title
    is shown literally: it may hold a path."""
    shown = literal(title)
    return Table(title=shown, title_justify="left", min_width=len(shown))


def _per_class_table(rows: list[dict[str, Any]], shown: int = 20) -> Table:
    """Per-class top-1, worst first; with many classes, the worst and best few."""
    rows = sorted((r for r in rows if r["images"]), key=lambda r: (r["acc1"], r["class"]))
    title = "Per-class top-1"
    if len(rows) > shown:
        rows = rows[: shown // 2] + rows[-shown // 2 :]
        title += f" (the {shown // 2} worst and best classes)"
    table = _titled(title)
    for column, justify in (("class", "left"), ("images", "right"), ("top-1", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(literal(row["class"]), str(row["images"]), f"{row['acc1']:.1f}%")
    return table


def _confusion_table(matrix: list[list[int]], names: list[str]) -> Table:
    table = _titled("Confusion matrix (rows: true class, columns: predicted)")
    table.add_column("")
    for name in names:
        table.add_column(literal(name), justify="right")
    for name, row in zip(names, matrix, strict=True):
        table.add_row(literal(name), *(str(n) for n in row))
    return table


def _most_confused_table(pairs: list[dict[str, Any]]) -> Table:
    table = _titled("Most confused classes")
    for column, justify in (("true class", "left"), ("predicted as", "left"), ("images", "right"),
                            ("share of the class", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for pair in pairs:
        table.add_row(
            literal(pair["true"]), literal(pair["predicted"]), str(pair["count"]), f"{100 * pair['share']:.1f}%"
        )
    return table


def print_inspection(summary: dict[str, Any], as_json: bool) -> None:
    """`inspect`: a two-column table, or the same facts as one JSON object."""
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    table = Table(title=literal(summary["path"]), title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if key == "path" or value is None:
            continue
        if key == "class_names":
            value = ", ".join(clip(name) for name in value[:10]) + (
                f" … ({len(value)} in all)" if len(value) > 10 else ""
            )
        elif key == "versions":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key in ("parameters", "size_bytes"):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), literal(value))
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
        console.print(f"note: {printable(note)}", highlight=False, markup=False)
    per_split = ", ".join(f"{split} {n}" for split, n in report["per_split"].items())
    console.print(f"checked {report['files']} images ({per_split}): {len(report['unreadable'])} unreadable")
    if report["unreadable"]:
        table = Table(title="Unreadable images", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for row in report["unreadable"][:50]:
            table.add_row(literal(row["file"]), literal(row["problem"]))
        console.print(table)
    for title, key in (("Colour modes", "modes"), ("Formats", "formats"), ("Shorter side", "shorter_side")):
        table = Table(title=title, title_justify="left")
        table.add_column(title.lower())
        table.add_column("images", justify="right")
        for name, count in report[key].items():
            table.add_row(literal(name), f"{count:,}")
        console.print(table)


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


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def print_predictions(outcome: dict[str, Any], as_json: bool) -> None:
    """`predict`: one line per image, best class first, or one JSON object; notes and unreadable files go to
    stderr either way, so stdout holds only results."""
    for note in outcome["notes"]:
        print(f"note: {printable(note)}", file=sys.stderr, flush=True)
    for error in outcome["errors"]:
        print(
            f"error: cannot read {printable(error['path'])}: {printable(error['reason'])}", file=sys.stderr, flush=True
        )
    if as_json:
        shown = {k: outcome[k] for k in ("checkpoint", "predictions", "errors")}
        print(json.dumps(shown), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    for row in outcome["predictions"]:
        classes = ", ".join(f"{printable(top['class'])} {top['probability']:.3f}" for top in row["top"])
        console.print(f"{printable(row['path'])}: {classes}", soft_wrap=True, highlight=False, markup=False)


def print_models(rows: list[dict[str, Any]], as_json: bool) -> None:
    """`models`: one row per architecture, or `{"models": [...]}`; the count last, where a reader looks."""
    if as_json:
        print(json.dumps({"models": rows}), flush=True)
        return
    table = Table(title="torchvision classifiers (default weights)", title_justify="left")
    for column, justify in (("arch", "left"), ("parameters", "right"), ("crop", "right"),
                            ("resize", "right"), ("ImageNet top-1", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["name"], f"{row['parameters'] / 1e6:,.1f}M", _or_dash(row["crop_size"]),
            _or_dash(row["resize_size"]), _or_dash(row["imagenet_acc1"], "{:.2f}%"),
        )  # fmt: skip
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(f"{len(rows)} architecture{'' if len(rows) == 1 else 's'}", highlight=False)


def print_environment(report: dict[str, Any], as_json: bool) -> None:
    """`env`: software, CPUs, accelerators (freest first), launcher variables, and what a run would do."""
    if as_json:
        print(json.dumps(report), flush=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(_environment_table(report))
    if report["cuda"]:
        console.print(_cuda_table(report["cuda"]))
    launcher = Table(title="Launcher variables", title_justify="left", show_header=False)
    launcher.add_column(style="bold")
    launcher.add_column(overflow="fold")
    for name, value in report["launcher_env"].items():
        launcher.add_row(literal(name), literal(value))
    if report["launcher_env"]:
        console.print(launcher)
    else:
        console.print("launcher variables: none set (torchrun, SLURM, CUDA_VISIBLE_DEVICES, NCCL_*)", highlight=False)
    console.print(f"plan: {printable(report['plan']['summary'])}", soft_wrap=True, highlight=False, markup=False)


def _environment_table(report: dict[str, Any]) -> Table:
    """Versions, distributed backends, CPUs and devices other than CUDA, as name/value rows."""
    table = Table(title="Environment", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, version in report["versions"].items():
        table.add_row(name.replace("_", " "), literal(version or "-"))
    table.add_row("distributed backends", _backends(report["distributed_backends"]))
    cpu = report["cpu"]
    usable = f", {cpu['usable']} usable by this process" if cpu["usable"] not in (None, cpu["count"]) else ""
    table.add_row("CPU cores", f"{cpu['count']}{usable}")
    table.add_row("torch threads", f"{cpu['torch_threads']} intra-op, {cpu['torch_interop_threads']} inter-op")
    table.add_row("CUDA devices", str(len(report["cuda"])))
    if report["mps"] is not None:
        table.add_row("MPS", "available" if report["mps"] else "not available")
    return table


def _cuda_table(devices: list[dict[str, Any]]) -> Table:
    """CUDA devices, the one with the most free memory first."""
    table = Table(title="CUDA devices (most free memory first)", title_justify="left")
    for column, justify in (("device", "left"), ("name", "left"), ("capability", "right"), ("total", "right"),
                            ("in use", "right"), ("free", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for d in devices:
        table.add_row(
            f"cuda:{d['index']}", literal(d["name"]), d["capability"], _gib(d["total_bytes"]), _gib(d["used_bytes"]),
            _gib(d["free_bytes"]) if d["free_bytes"] is not None else literal(d.get("error", "-")),
        )  # fmt: skip
    return table


def _backends(available: dict[str, bool]) -> str:
    """The backends a run may use and, in brackets, those it may not: gloo, nccl (not mpi, ucc)."""
    have = ", ".join(name for name, has in available.items() if has) or "none"
    lacking = [name for name, has in available.items() if not has]
    return have + (f" (not {', '.join(lacking)})" if lacking else "")


def _gib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**30:,.1f} GiB"


def _or_dash(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)
