"""Tables that fit the terminal: the least useful columns go first, long cells fold, nothing is cut.

A pipe, a CI log or an 80-column terminal gives rich 80 columns, and a table wider than that has
every column squeezed to `versi…`. Here each column says how readily it goes (`drop`: 0 never,
higher first), columns are dropped until the table's natural width fits, and what is left folds
long cells onto more lines instead of cutting them. A caption names what was left out and how to
see it (`--wide`: every column at full width; `--json` is always whole).

Width, worked out for rich's default box: each column takes its cells' width plus one space of
padding each side, and the borders take one character more than there are columns, so n columns of
natural widths w_i take sum(w_i) + 3n + 1 characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Column:
    header: str
    drop: int = 0  # 0: always shown; otherwise dropped before columns with a lower number
    justify: str = "left"
    fold_at: int | None = None  # a free-text column folds at this width rather than push others out


def natural_width(widths: Sequence[int]) -> int:
    """Characters a table of columns this wide takes with rich's default box and padding."""
    return sum(widths) + 3 * len(widths) + 1


def cell_widths(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[int]:
    """Each column's natural width: its widest cell or its header."""
    return [
        max([len(c.header), *(len(line) for row in rows for line in str(row[i]).splitlines() or [""])])
        for i, c in enumerate(columns)
    ]


def columns_that_fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Indices of the columns to show at `width`: drop the most droppable until the rest fit."""
    widths = [
        min(w, max(c.fold_at, len(c.header))) if c.fold_at else w
        for c, w in zip(columns, cell_widths(columns, rows), strict=True)
    ]
    keep = list(range(len(columns)))
    droppable = sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: (-columns[i].drop, -i))
    for i in droppable:
        if natural_width([widths[k] for k in keep]) <= width:
            break
        keep.remove(i)
    return keep


def fitted_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    wide: bool = False,
    title: str | None = None,
) -> Table:
    """A rich Table of `rows` that fits `width` (or every column at full width with `wide`)."""
    keep = list(range(len(columns))) if wide else columns_that_fit(columns, rows, width)
    hidden = [columns[i].header for i in range(len(columns)) if i not in keep]
    caption = f"not shown at {width} columns: {', '.join(hidden)} (--wide shows them)" if hidden else None
    table = Table(title=title, caption=caption, caption_justify="left")
    for i in keep:
        column = columns[i]
        # fold, never "…": a long cell goes on over more lines. min_width keeps headers whole.
        table.add_column(
            column.header,
            overflow="fold",
            min_width=len(column.header),
            no_wrap=wide,
            justify=column.justify,  # type: ignore[arg-type]
        )
    for row in rows:
        table.add_row(*(str(row[i]) for i in keep))
    return table


def print_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    wide: bool = False,
    title: str | None = None,
) -> None:
    """Print a fitted table on `console`; with `wide`, as wide as it needs, whatever the terminal."""
    table = fitted_table(columns, rows, width=console.width, wide=wide, title=title)
    needed = natural_width(cell_widths(columns, rows))
    if wide and needed > console.width:
        # rich renders no wider than its console (80 in a pipe): a console as wide as the table.
        console = Console(
            file=console.file, width=needed, force_terminal=console.is_terminal, no_color=console.no_color
        )
    console.print(table)
