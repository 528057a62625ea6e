"""Tables of an evaluation's results, shared by the live reporter and the one-shot printing."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ..core.text import printable


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


def literal(value: object) -> Text:
    """`printable`, as rich text shown as written where rich would read markup and emoji codes (table
    cells, titles): a class named `[/]` or `:cat:` is a name, never a tag (a stray closing tag is an error
    in rich) nor a picture."""
    return Text(printable(value))
