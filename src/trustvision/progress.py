"""Progress reporting: Rich bars in the terminal, silence in library use.

Sections take a ``progress`` object with one method, ``task(description, total)``,
returning a callable ``advance(n=1)``; :class:`Quiet` ignores everything.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Protocol


class Progress(Protocol):
    """What sections, attacks and trainers report progress to."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """Start a task of ``total`` steps; returns ``advance(n=1)``."""
        ...


class Quiet:
    """No output (library default)."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n=1: None


class RichProgress:
    """Rich progress bars; one bar per task, kept on screen when finished."""

    def __init__(self, progress) -> None:
        self._p = progress

    def task(self, description: str, total: int) -> Callable[[int], None]:
        tid = self._p.add_task(description, total=max(total, 1))
        return lambda n=1: self._p.advance(tid, n)


@contextmanager
def rich_progress(console=None) -> Iterator[RichProgress]:
    """Context manager yielding a :class:`RichProgress` (bars with elapsed time and ETA)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as p:
        yield RichProgress(p)
