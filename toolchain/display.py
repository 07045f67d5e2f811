"""Terminal output: tables and progress bars (rich), kept in one place."""

from __future__ import annotations

from typing import Iterable, Sequence


# Width when the output is a file or pipe (logs, CI): wide enough that tables
# keep every value whole instead of rich's default of 80 columns.
LOG_WIDTH = 160


def console(stderr: bool = False):
    import sys

    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False,
                   width=None if stream.isatty() else LOG_WIDTH)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> None:
    """Print ``rows`` under ``headers`` as a table on stdout."""
    from rich.table import Table

    tab = Table(title=title, show_edge=False, header_style="bold")
    for i, h in enumerate(headers):
        # the first column names the row: never cut; the others fold, never "…"
        tab.add_column(h, no_wrap=i == 0, overflow="fold")
    for row in rows:
        tab.add_row(*row)
    console().print(tab)


def progress(transient: bool = False):
    """A rich progress bar for long work, drawn on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                    console=console(stderr=True), transient=transient)
