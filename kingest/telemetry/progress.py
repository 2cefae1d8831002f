"""Progress bars for the command line (rich), kept apart from the work they report on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["new_progress", "produce_with_progress"]

T = TypeVar("T")


def new_progress(console: Console | None = None) -> Progress:
    """A progress display with count, percentage, rate-friendly columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


def produce_with_progress(
    work: Callable[[Callable[[int], None]], T], *, total: int, description: str
) -> T:
    """Run ``work(advance)`` while showing a bar that ``advance(n)`` moves forward."""
    with new_progress() as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(delta: int) -> None:
            progress.advance(task, delta)
            speed = progress.tasks[task].speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f}/s")

        return work(advance)
