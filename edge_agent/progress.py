"""Rich progress bars shared by the CLIs (quiet when output is not a terminal)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def make_progress(enabled: bool = True) -> Progress:
    """A progress bar with a free-text field ``info`` (loss, accuracy) and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or _off() or not sys.stderr.isatty() and not _forced(),
        transient=False,
    )


def _forced() -> bool:
    import os

    return os.environ.get("EDGE_PROGRESS") == "1"


def _off() -> bool:
    import os

    return os.environ.get("EDGE_PROGRESS") == "0"
