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


FEW_STEPS = 200     # a task with at most this many steps (epochs) logs every step


class PlainProgress:
    """Progress as plain lines on stderr, for logs (CI, ``make build > log``),
    where a live bar shows nothing: a line per step of a short task (epochs),
    else at most one every ``every`` seconds, and always the last. The subset of
    rich.progress.Progress that vst uses."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.tasks = every, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks.values():
            if task["dirty"]:
                self._print(task)

    def add_task(self, description: str, total=None, completed: int = 0, info: str = "",
                 visible: bool = True) -> int:
        import time

        key = len(self.tasks)
        self.tasks[key] = {"description": description, "total": total, "completed": completed,
                           "info": info, "visible": visible, "start": time.monotonic(),
                           "last": 0.0, "dirty": False}
        return key

    def update(self, key: int, advance: int = 0, completed=None, total=None, info=None,
               **_) -> None:
        import time

        task = self.tasks[key]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        task["total"] = total if total is not None else task["total"]
        task["info"] = info if info is not None else task["info"]
        task["dirty"] = True
        now = time.monotonic()
        done = task["total"] is not None and task["completed"] >= task["total"]
        few = task["total"] is not None and task["total"] <= FEW_STEPS   # e.g. epochs: each
        if done or few or now - task["last"] >= self.every:
            self._print(task)
            task["last"] = now

    def _print(self, task: dict) -> None:
        import sys
        import time

        task["dirty"] = False
        if not task["visible"]:
            return
        total = f"/{task['total']}" if task["total"] is not None else ""
        seconds = time.monotonic() - task["start"]
        print(f"vst: {task['description']} {task['completed']}{total} {task['info']} "
              f"({seconds:.0f} s)".replace("  ", " "), file=sys.stderr, flush=True)


def progress(transient: bool = False):
    """Progress of long work on stderr: a rich bar on a terminal, plain lines
    at a steady pace otherwise (logs)."""
    import sys

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    if not sys.stderr.isatty():
        return PlainProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                    console=console(stderr=True), transient=transient)
