"""Progress reporting: Rich bars in a terminal, one line per step elsewhere, silence in library use.

Sections take a ``progress`` object with one method, ``task(description, total)``,
returning a callable ``advance(n=1)``; :class:`Quiet` ignores everything.  :class:`LineProgress`
is for output that is not a terminal (a log file, CI): a line when a step starts and one when it
ends, each with the elapsed time, so that a redirected run shows what it is doing at once.
"""
from __future__ import annotations

import time
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


class LineProgress:
    """One line per step: ``[  12.3s] start: PGD (linf) (40 steps)`` and ``[  20.1s] done:  PGD (linf) in 7.8s``.

    ``write(line)`` prints a line (user text is passed as is: the caller's printer must not interpret
    markup); ``clock`` returns seconds.  Steps never finished are reported by :meth:`close`.
    """

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self._write, self._clock = write, clock
        self._t0 = clock()
        self._open: dict[int, tuple[str, int, list[int], float]] = {}
        self._count = 0

    def _line(self, text: str) -> None:
        self._write(f"[{self._clock() - self._t0:7.1f}s] {text}")

    def task(self, description: str, total: int) -> Callable[[int], None]:
        total = max(int(total), 1)
        self._count += 1
        key, done, start = self._count, [0], self._clock()
        self._open[key] = (description, total, done, start)
        self._line(f"start: {description} ({total} step{'s' if total != 1 else ''})")

        def advance(n: int = 1) -> None:
            if key not in self._open:
                return
            done[0] += n
            if done[0] >= total:
                del self._open[key]
                self._line(f"done:  {description} in {self._clock() - start:.1f}s")
        return advance

    def close(self) -> None:
        """Report the steps that were started but not finished (stopped early or interrupted)."""
        for description, total, done, start in self._open.values():
            self._line(f"stopped: {description} at {done[0]}/{total} after {self._clock() - start:.1f}s")
        self._open.clear()


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
