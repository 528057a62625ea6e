"""Tables printed once, at the end of a run or of an evaluation; the live reporter only prints them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from ..core.text import printable

if TYPE_CHECKING:
    from .metrics import EpochResult


def training_summary(history: list[EpochResult]) -> Table:
    """One row per epoch; the best marked with a star."""
    table = Table(title="Training summary", title_justify="left")
    with_ema = any(r.ema for r in history)
    columns = ("epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5",
               *(("ema top-1",) if with_ema else ()), "best top-1", "lr", "time", "saved")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in history:
        table.add_row(
            f"{r.epoch}{' *' if r.is_best else ''}", f"{r.train.loss:.4f}", f"{r.train.acc1:.2f}",
            f"{r.val.loss:.4f}", f"{r.val.acc1:.2f}", f"{r.val.acc5:.2f}",
            *((f"{r.ema.acc1:.2f}" if r.ema else "",) if with_ema else ()), f"{r.best_acc1:.2f}", f"{r.lr:.4g}",
            duration(r.train.seconds + r.val.seconds), "yes" if r.saved else "",
        )  # fmt: skip
    return table


def evaluation_tables(result: dict[str, Any]) -> list[Table]:
    """The figures, per-class top-1, then the full confusion matrix while it fits a terminal (10 classes),
    else its largest mistakes."""
    table = _titled(f"Evaluation of {result['checkpoint']}", (), ("images", "top-1", "top-5", "loss", "img/s"))
    table.add_row(
        str(result["images"]), f"{result['acc1']:.2f}%", f"{result['acc5']:.2f}%",
        f"{result['loss']:.4f}", f"{result['images_per_second']:,.0f}",
    )  # fmt: skip
    tables = [table, _per_class_table(result["per_class"])]
    names = [row["class"] for row in result["per_class"]]
    if len(names) <= 10:
        tables.append(_confusion_table(result["confusion"], names))
    elif result["most_confused"]:
        tables.append(_most_confused_table(result["most_confused"]))
    return tables


def _titled(title: str, left: Iterable[str], right: Iterable[str | Text]) -> Table:
    """A table at least as wide as its title, so the title is never wrapped over several lines. The title
    is shown literally: it may hold a path. Its columns: `left`, justified left, then `right`."""
    shown = literal(title)
    table = Table(title=shown, title_justify="left", min_width=len(shown))
    for column in left:
        table.add_column(column)
    for column in right:
        table.add_column(column, justify="right")
    return table


def _per_class_table(rows: list[dict[str, Any]], shown: int = 20) -> Table:
    """Per-class top-1, worst first; with many classes, the worst and best few."""
    rows = sorted((r for r in rows if r["images"]), key=lambda r: (r["acc1"], r["class"]))
    title = "Per-class top-1"
    if len(rows) > shown:
        rows = rows[: shown // 2] + rows[-shown // 2 :]
        title += f" (the {shown // 2} worst and best classes)"
    table = _titled(title, ("class",), ("images", "top-1"))
    for row in rows:
        table.add_row(literal(row["class"]), str(row["images"]), f"{row['acc1']:.1f}%")
    return table


def _confusion_table(matrix: list[list[int]], names: list[str]) -> Table:
    table = _titled("Confusion matrix (rows: true class, columns: predicted)", ("",), [literal(n) for n in names])
    for name, row in zip(names, matrix, strict=True):
        table.add_row(literal(name), *(str(n) for n in row))
    return table


def _most_confused_table(pairs: list[dict[str, Any]]) -> Table:
    table = _titled("Most confused classes", ("true class", "predicted as"), ("images", "share of the class"))
    for pair in pairs:
        table.add_row(
            literal(pair["true"]), literal(pair["predicted"]), str(pair["count"]), f"{100 * pair['share']:.1f}%"
        )
    return table


def literal(value: object) -> Text:
    """`printable`, as rich text shown as written where rich would read markup and emoji codes (table
    cells, titles): a class named `[/]` or `:cat:` is a name, never a tag (a stray closing tag is an error
    in rich) nor a picture."""
    return Text(printable(value))


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
