"""The one way steps are timed: a :class:`Stopwatch` whose ``timings`` go into task results.

Shared by the core (load and capture steps) and the tasks (lock wait, whole phases): one clock, one
rounding, one ``total``. Neutral on purpose: it imports nothing of the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Decimal places kept: milliseconds are all a task result or a benchmark reads.
PRECISION = 3


class Stopwatch:
    """Seconds per named step since a start; ``clock`` is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.timings: dict[str, float] = {}
        self._start = self._last = clock()

    def elapsed(self) -> float:
        """Seconds since the stopwatch started."""
        return round(self._clock() - self._start, PRECISION)

    def mark(self, step: str) -> float:
        """Record ``step`` as the time since the previous mark (or the start); returns it."""
        now = self._clock()
        self.timings[step] = seconds = round(now - self._last, PRECISION)
        self._last = now
        return seconds

    @contextmanager
    def phase(self, step: str) -> Iterator[None]:
        """Record ``step`` as the time the ``with`` block took, however it ends."""
        started = self._clock()
        try:
            yield
        finally:
            self.timings[step] = round(self._clock() - started, PRECISION)
            self._last = self._clock()

    def total(self) -> dict[str, float]:
        """The timings with ``total`` (seconds since the start) added."""
        self.timings["total"] = self.elapsed()
        return self.timings


__all__ = ["PRECISION", "Stopwatch"]
