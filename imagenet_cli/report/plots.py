"""Pictures of runs: training curves from `RUN_DIR/metrics.jsonl`, and confusion matrices.

matplotlib is an optional extra (`imagenet-cli[plot]`), so it is imported inside the functions that draw:
importing this module, `--help`, and training without the extra all work without it. Drawing uses the Agg
canvas directly, never pyplot, so no global figure state leaks between calls (or threads), and no display
is needed. Reading the metrics is plain Python and tolerant: the file is appended to by a live run, so its
last line may be half-written, and its format may grow new record types and keys.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomicfile import atomic_write
from ..core.errors import UserError
from . import X_AXES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRICS_NAME = "metrics.jsonl"
PR_SET_PDEATHSIG = 1  # prctl(2)
CURVES_NAME = "curves.png"
RUNS_FILE = "runs.png"
INSTALL_HINT = 'plotting needs matplotlib: pip install "imagenet-cli[plot]"'
EPOCH_AXIS = "epoch (1 = end of the first)"
SPLIT_STYLES = (("train", "-"), ("val", "--"))  # line styles, the same for every run
CELL_COUNTS_UP_TO = 20  # classes; beyond this the numbers no longer fit their cells
TICK_LABELS_UP_TO = 50  # classes; beyond this the names overlap into a black band


@dataclass
class RunMetrics:
    """What one run's metrics.jsonl says: its epoch records by epoch, its LR samples, and reading problems."""

    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)
    lr_steps: list[tuple[float, float]] = field(default_factory=list)  # (fractional epoch, lr), in order
    malformed: list[int] = field(default_factory=list)  # 1-based line numbers


def default_output(runs: list[Path]) -> Path:
    """Where `plot` writes without --output: beside the run for one, in the current directory for several."""
    return runs[0] / CURVES_NAME if len(runs) == 1 else Path(RUNS_FILE)


def training_curves(runs: list[Path], output: Path, x_axis: str = "epoch") -> list[str]:
    """Draw loss, top-1 and the LR schedule of one or more runs into one PNG at `output`, along epochs or
    along time (`x_axis`: recipes that differ in cost per epoch compare by the time they took). Returns notes
    for the user (skipped runs, skipped malformed lines) for the caller to place: training logs them, the CLI
    prints them to stderr. A run that cannot be drawn is an error when it is the only one, and a note when
    others can still be compared."""
    if not runs:
        raise UserError("no run directory to plot")
    notes: list[str] = []
    drawable: list[tuple[Path, RunMetrics]] = []
    for run in _unique(runs, notes):
        try:
            metrics = read_metrics(run)
            if x_axis == "time":
                epoch_spans(run, metrics)
        except UserError as exc:
            if len(runs) == 1:
                raise
            notes.append(f"skipped a run: {exc}")
            continue
        if metrics.malformed:
            notes.append(_malformed_note(run / METRICS_NAME, metrics.malformed))
        drawable.append((run, metrics))
    if not drawable:
        raise UserError("none of the runs can be drawn: " + "; ".join(notes))
    labels = run_labels([run for run, _ in drawable])
    figure = _curves_figure(labels, [metrics for _, metrics in drawable], placing_for(drawable, x_axis))
    _save_png(figure, output)
    return notes


def read_metrics(run: Path) -> RunMetrics:
    """Parse RUN/metrics.jsonl; a UserError naming the run when there is nothing to plot yet. An epoch
    recorded twice (a run resumed from an older checkpoint) keeps its last record. Train records that go
    back in time start a new history from that point, for the same reason."""
    path = run / METRICS_NAME
    if not run.is_dir():
        raise UserError(f"{run} is not a directory")
    if not path.is_file():
        raise UserError(f"{run} has no {METRICS_NAME} (is it a run's --output-dir?)")
    metrics = RunMetrics()
    train: list[tuple[tuple[float, float], float]] = []  # ((epoch, step), lr)
    for record in _records(path, metrics.malformed):
        kind = record.get("type")
        if kind == "epoch":
            metrics.epochs[record["epoch"]] = record
        elif kind == "train":
            _add_train_record(train, record)
    if not metrics.epochs:
        raise UserError(f"{run} has no epoch records in {METRICS_NAME} yet (the first epoch has not finished)")
    metrics.epochs = dict(sorted(metrics.epochs.items()))
    metrics.lr_steps = [(epoch + step, lr) for (epoch, step), lr in train]
    return metrics


def _records(path: Path, malformed: list[int]) -> Iterator[dict[str, Any]]:
    """Each usable record; the line numbers of unusable ones go to `malformed`. Records of unknown types
    pass through untouched, for the caller to ignore."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or (
                record.get("type") in ("train", "epoch") and not _is_int(record.get("epoch"))
            ):
                malformed.append(number)
                continue
            yield record


def _add_train_record(train: list[tuple[tuple[float, float], float]], record: dict[str, Any]) -> None:
    """Append a train record's LR sample at its fractional epoch, dropping samples a restart superseded."""
    step, steps, lr = record.get("step"), record.get("steps"), record.get("lr")
    if not (_is_number(step) and _is_number(steps) and _is_number(lr)) or steps <= 0:
        return  # not enough to place it on the LR plot; other panels do not use train records
    position = (float(record["epoch"]), step / steps)
    if train and position <= train[-1][0]:
        train[:] = [sample for sample in train if sample[0] < position]
    train.append((position, float(lr)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _malformed_note(path: Path, lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
    plural = "s" if len(lines) > 1 else ""
    return f"{path}: skipped {len(lines)} malformed line{plural} ({shown}; a run stopped mid-write?)"


def _unique(runs: list[Path], notes: list[str]) -> list[Path]:
    """The runs in order, each directory once: the same run twice would draw one line over another."""
    unique: dict[Path, Path] = {}
    for run in runs:
        if run.resolve() in unique:
            notes.append(f"{run} was given more than once; drawn once")
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's directory name; runs whose names collide get as many parent folders as tell them apart."""
    parts = [run.resolve().parts for run in runs]
    depth = [1] * len(runs)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        colliding = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not colliding:
            return labels
        for i in colliding:
            depth[i] += 1


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas, or the one-line install hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UserError(INSTALL_HINT) from exc
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def epoch_spans(run: Path, metrics: RunMetrics) -> dict[int, tuple[float, float]]:
    """Each recorded epoch's (start, length) in seconds of training and validation, counted from the first
    recorded one: start-up, saving and the gaps of a resume left out, so runs compare by the work they did."""
    spans: dict[int, tuple[float, float]] = {}
    elapsed = 0.0
    for epoch, record in metrics.epochs.items():
        seconds = _value(record.get("seconds"))
        if not (seconds >= 0 and math.isfinite(elapsed + seconds)):  # NaN fails the first test
            raise UserError(f"{run} records no time for epoch {epoch} in {METRICS_NAME}: plot it with --x-axis epoch")
        spans[epoch] = (elapsed, seconds)
        elapsed += seconds
    return spans


@dataclass(frozen=True)
class Placing:
    """Where along x a run's points go: at epochs (an epoch's record at its end, 1 for the first), or at
    the seconds, minutes or hours of training and validation done by then."""

    label: str = EPOCH_AXIS
    spans: list[dict[int, tuple[float, float]]] | None = None  # per run, for time
    unit: float = 1.0  # seconds per unit of the axis

    def epoch_start(self, run: int, epoch: int) -> float:
        if self.spans is None:
            return float(epoch)
        return self.spans[run][epoch][0] / self.unit

    def epoch_end(self, run: int, epoch: int) -> float:
        if self.spans is None:
            return epoch + 1.0
        start, length = self.spans[run][epoch]
        return (start + length) / self.unit

    def at(self, run: int, position: float) -> float:
        """A fractional epoch (a train record's epoch + step/steps) on the axis; NaN in an epoch with no
        record of its time (the one still running)."""
        if self.spans is None:
            return position
        epoch = math.ceil(position) - 1  # the last step of epoch e sits at e + 1
        if epoch not in self.spans[run]:
            return math.nan
        start, length = self.spans[run][epoch]
        return (start + (position - epoch) * length) / self.unit


def placing_for(runs: list[tuple[Path, RunMetrics]], x_axis: str) -> Placing:
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, got {x_axis!r}")
    if x_axis == "epoch":
        return Placing()
    spans = [epoch_spans(run, metrics) for run, metrics in runs]
    longest = max(start + length for per_run in spans for start, length in per_run.values())
    name, unit = ("s", 1.0) if longest < 600 else ("min", 60.0) if longest < 10_800 else ("h", 3600.0)
    return Placing(f"training + validation time ({name}; start-up and saving not counted)", spans, unit)


def _curves_figure(labels: list[str], runs: list[RunMetrics], placing: Placing) -> Figure:
    """Three panels side by side; each run one colour, train solid and val dashed."""
    figure = _figure(16, 5)
    from matplotlib.lines import Line2D

    loss, top1, lr = figure.subplots(1, 3)
    for index, metrics in enumerate(runs):
        colour = f"C{index % 10}"
        x = [placing.epoch_end(index, epoch) for epoch in metrics.epochs]
        _epoch_lines(loss, x, metrics, "loss", colour)
        _epoch_lines(top1, x, metrics, "acc1", colour)
        _lr_line(lr, metrics, colour, placing, index)
    _label(loss, "Loss", "cross-entropy loss", placing.label)
    _label(top1, "Top-1 accuracy", "top-1 (%)", placing.label)
    _label(lr, "Learning rate", "learning rate", placing.label)
    _log_scale_if_wide(lr)
    handles = [Line2D([], [], color=f"C{i % 10}", label=label) for i, label in enumerate(labels)]
    handles += [Line2D([], [], color="black", linestyle=style, label=split) for split, style in SPLIT_STYLES]
    loss.legend(handles=handles, fontsize="small")
    title = ", ".join(labels)
    figure.suptitle(f"Training curves: {title if len(title) <= 120 else title[:117] + '...'}")
    return figure


def _epoch_lines(axes: Axes, x: list[float], metrics: RunMetrics, name: str, colour: str) -> None:
    """train_NAME solid and val_NAME dashed, at the end of each epoch (`x`); gaps where a value is missing."""
    for split, style in SPLIT_STYLES:
        y = [_value(record.get(f"{split}_{name}")) for record in metrics.epochs.values()]
        if not all(math.isnan(v) for v in y):
            axes.plot(x, y, color=colour, linestyle=style, marker="o", markersize=3)


def _lr_line(axes: Axes, metrics: RunMetrics, colour: str, placing: Placing, run: int) -> None:
    """The LR at each logged step when the run logged steps, else held through each epoch."""
    if metrics.lr_steps:
        x, y = zip(*((placing.at(run, position), lr) for position, lr in metrics.lr_steps), strict=True)
        axes.plot(x, y, color=colour, drawstyle="steps-pre")  # a record's LR held since the previous one
        return
    epochs = list(metrics.epochs)
    rates = [_value(record.get("lr")) for record in metrics.epochs.values()]
    x = [placing.epoch_start(run, epoch) for epoch in epochs] + [placing.epoch_end(run, epochs[-1])]
    axes.plot(x, [*rates, rates[-1]], color=colour, drawstyle="steps-post")


def _value(value: Any) -> float:
    """A number as a float; NaN for anything else, and for an integer too large for a float."""
    try:
        return float(value) if _is_number(value) else math.nan
    except OverflowError:
        return math.nan


def _label(axes: Axes, title: str, ylabel: str, xlabel: str) -> None:
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(True, alpha=0.3)


def _log_scale_if_wide(axes: Axes) -> None:
    """Step schedules divide the LR by 10 at a time: on a linear axis every step after the first is flat."""
    rates = [y for line in axes.get_lines() for y in line.get_ydata() if _is_number(y) and not math.isnan(y)]
    if rates and min(rates) > 0 and max(rates) / min(rates) >= 10:
        axes.set_yscale("log")
        axes.set_ylabel("learning rate (log scale)")


def confusion_matrix_png(matrix: list[list[int]], class_names: list[str], output: Path, title: str) -> None:
    """A heat map of `matrix` (rows: true class, columns: predicted) written as a PNG at `output`. Colours
    are each row's shares, so a rare class's errors are as visible as a common one's; the counts are written
    in the cells while they fit, and class names label the axes while they can be read."""
    _check_square(matrix, class_names)
    classes = len(class_names)
    side = min(max(6.0, 2.5 + 0.3 * classes), 20.0) if classes <= TICK_LABELS_UP_TO else 9.0
    figure = _figure(side + 1.5, side)
    axes = figure.subplots()
    shares = [[count / total if (total := sum(row)) else 0.0 for count in row] for row in matrix]
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, label="share of the true class's images")
    ticks, labels = (range(classes), class_names) if classes <= TICK_LABELS_UP_TO else ([], [])
    axes.set_xticks(ticks, labels, rotation=90)
    axes.set_yticks(ticks, labels)
    if classes <= CELL_COUNTS_UP_TO:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if shares[i][j] > 0.5 else "black"  # readable on dark cells
                axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize="small")
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    _save_png(figure, output)


def _check_square(matrix: list[list[int]], class_names: list[str]) -> None:
    classes = len(class_names)
    if classes == 0 or len(matrix) != classes or any(len(row) != classes for row in matrix):
        raise ValueError(f"a confusion matrix for {classes} classes must be {classes}x{classes}")


def most_confused(matrix: list[list[int]], class_names: list[str], n: int = 10) -> list[dict[str, Any]]:
    """The `n` most frequent mistakes: which true class was taken for which, how often, and what share of
    the true class's images that is. Largest counts first, ties in name order, so reports are stable."""
    _check_square(matrix, class_names)
    totals = [sum(row) for row in matrix]
    pairs = [
        {"true": class_names[i], "predicted": class_names[j], "count": int(count), "share": count / totals[i]}
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        if i != j and count > 0
    ]
    pairs.sort(key=lambda pair: (-pair["count"], pair["true"], pair["predicted"]))
    return pairs[: max(n, 0)]


def _save_png(figure: Figure, output: Path) -> None:
    """Whole or not at all, so a viewer or a second writer never sees half a PNG."""
    atomic_write(str(output), lambda file: figure.savefig(file, format="png"))


def main(argv: list[str]) -> int:
    """`python -m imagenet_cli.report.plots --when-told RUN_DIR PARENT_PID`: the drawer a run starts beside
    its last validation (`curves.Drawer`). It imports matplotlib at once, then draws RUN_DIR/curves.png
    when its standard input says `draw`; at end of input without it, it ends having drawn nothing."""
    if len(argv) != 3 or argv[0] != "--when-told" or not argv[2].isdigit():
        print("usage: python -m imagenet_cli.report.plots --when-told RUN_DIR PARENT_PID", file=sys.stderr)
        return 2
    _end_with_the_run(int(argv[2]))
    _figure(1, 1)  # the imports, while the run still validates
    if sys.stdin.readline().strip() != "draw":
        return 0
    try:
        training_curves([Path(argv[1])], Path(argv[1]) / CURVES_NAME)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _end_with_the_run(parent: int) -> None:
    """The drawer ends when its run does, even a run killed outright (Linux: the kernel's parent-death
    signal), and SIGTERM ends it as an exception would: a picture being written leaves no temporary file."""
    signal.signal(signal.SIGTERM, _stop)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the run ended before the line above took effect
        raise SystemExit(0)


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
