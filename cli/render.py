"""Printing tables and summaries for the terminal."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cegraph.progress import Progress, live

__all__ = ["arrow_table", "console", "escape", "grid", "progress"]

#: Seconds between progress lines when the output is not a terminal.
PIPE_EVERY_S = 10.0

_probe = Console()
# a pipe or CI log gets wide tables instead of rich's 80-column default
console = _probe if _probe.is_terminal else Console(width=200)


def arrow_table(result: pa.Table, fmt: str = "table", *, title: str | None = None) -> None:
    rows = result.to_pylist()
    if fmt == "json":
        print(json.dumps(rows, default=str, indent=1))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=result.column_names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        grid(result.column_names, [[r[c] for c in result.column_names] for r in rows],
             title=title)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    # data, not markup: "[wrong_answer] ..." must print as written
    return escape(text if len(text) <= 120 else text[:117] + "...")


def grid(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
         ) -> None:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


@contextlib.contextmanager
def progress(total: int, label: str, tokens: Callable[[], int] = lambda: 0
             ) -> Iterator[Progress]:
    """The live progress line (`cegraph.progress`): a status line on a terminal whose last
    state stays printed; in a pipe or log, a printed line every few seconds."""
    counts = Progress(total, label, tokens)
    if not console.is_terminal:
        with live(counts, lambda line: console.print(escape(line)), every_s=PIPE_EVERY_S):
            yield counts
        return
    with console.status(label) as status, live(counts,
                                                lambda line: status.update(escape(line))):
        yield counts
    console.print(escape(counts.line()))
