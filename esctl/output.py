"""How `esctl` prints tables: never a cut identifier, offset or time.

Standard output not a terminal (a pipe, a file): plain columns aligned with spaces under a header
row of upper-case names (`GROUP  TOPIC  PARTITION ...`), like `kubectl get` and Kafka's own tools,
without box-drawing characters or escape codes, so that `awk`, `grep` and copy-paste get every value
whole. On a terminal: a rich table whose columns never truncate (ids, offsets, times stay on one
line; only columns declared as free text wrap); when even that does not fit the terminal's width,
the plain columns instead (the terminal wraps long lines, it cuts nothing).

Scripts should use `--json` where a command has it: its format is the stable one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Between two plain columns (kubectl uses three spaces as well).
GAP = "   "
#: An empty cell, in both layouts: keeps the plain columns countable with `awk`.
EMPTY = "-"


@dataclass(frozen=True)
class Column:
    """A table column. `wrap`: free text that may wrap on a terminal (never an identifier)."""

    name: str
    wrap: bool = False


def _column(c: str | Column) -> Column:
    return c if isinstance(c, Column) else Column(c)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # one line per row, whatever the value holds
    text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return text or EMPTY


def plain_table(columns: Sequence[str | Column], rows: Iterable[Sequence[object]]) -> str:
    """The plain layout: a header row, then one line per row, columns padded to align."""
    header = [_column(c).name.upper().replace(" ", "-") for c in columns]
    body = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [GAP.join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in body]
    head = GAP.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def rich_table(
    columns: Sequence[str | Column], rows: Iterable[Sequence[object]], title: str | None = None
) -> Table:
    """The terminal layout: nothing truncated; only `wrap` columns may fold onto more lines."""
    table = Table(title=title)
    for c in map(_column, columns):
        table.add_column(c.name, no_wrap=not c.wrap, overflow="fold")
    for row in rows:
        # Text, not markup: a value such as `review:[draft]` is printed as it is; a value
        # given as a Text keeps its style (plain columns print its text only)
        table.add_row(*(Text(_cell(v), style=v.style if isinstance(v, Text) else "") for v in row))
    return table


def _rich_width(columns: Sequence[str | Column], rows: Sequence[Sequence[object]]) -> int:
    """The narrowest the rich table can be without cutting a value: every column that does not
    wrap as wide as its widest cell, wrapping ones as their longest word; plus one space of
    padding each side of a cell and a border line between (and around) columns."""
    total = 0
    for i, c in enumerate(map(_column, columns)):
        cells = [c.name, *(_cell(r[i]) for r in rows)]
        if c.wrap:
            total += max(len(word) for cell in cells for word in cell.split() or [""])
        else:
            total += max(len(cell) for cell in cells)
    return total + 3 * len(columns) + 1


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def print_table(
    columns: Sequence[str | Column],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    file: TextIO | None = None,
    terminal: bool | None = None,
    width: int | None = None,
) -> None:
    """Print a table on standard output: rich on a terminal, plain otherwise. (`file`,
    `terminal` and `width` stand for standard output and what it is, in tests.)"""
    out = file or sys.stdout
    rows = [list(r) for r in rows]
    on_terminal = stdout_is_terminal() if terminal is None else terminal
    if on_terminal:
        console = (
            Console(file=out, force_terminal=True, width=width) if file is not None else Console()
        )
        if _rich_width(columns, rows) <= console.width:
            console.print(rich_table(columns, rows, title))
            return
    if title:
        print(title, file=out)
    print(plain_table(columns, rows), file=out)


def print_line(text: str, *, style: str | None = None) -> None:
    """One line of text on standard output, never wrapped or cut; styled on a terminal only."""
    if stdout_is_terminal():
        Console().print(Text(text, style=style or ""), soft_wrap=True)
    else:
        print(text)
