"""Progress display shared by every stage: one stderr console, a progress bar, plain progress lines."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def say(message: str) -> None:
    """Print a progress line; markup off, so '[ppo]' and file names with brackets print as written."""
    console.print(message, markup=False, highlight=False)


def progress(transient: bool = False) -> Progress:
    """A progress bar with a `info` field; RLHF_NO_PROGRESS=1 turns it off (tests, logs)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=transient, disable=os.environ.get("RLHF_NO_PROGRESS") == "1")
