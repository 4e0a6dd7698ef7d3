"""The rich progress bar every long-running stage shows (steps, rate, ETA)."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def bar(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


def announce(line: str) -> None:
    """A stage's start line, on stderr even under ``--quiet``: a reviewer must see where a run runs."""
    print(line, file=sys.stderr, flush=True)
