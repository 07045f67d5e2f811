"""Terminal output: tables and progress bars (rich), kept in one place."""

from __future__ import annotations

from typing import Iterable, Sequence


def console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> None:
    """Print ``rows`` under ``headers`` as a table on stdout."""
    from rich.table import Table

    tab = Table(title=title, show_edge=False, header_style="bold")
    for h in headers:
        tab.add_column(h)
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
