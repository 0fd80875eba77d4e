"""Progress of a load or capture, reported to a callback (the task turns it into loadlog rows)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    message: str = ""
    percent: float | None = None


ProgressCallback = Callable[[ProgressEvent], None]


class Progress:
    """Sends :class:`ProgressEvent` values to an optional sink; a failing sink is logged, not raised,
    because a broken progress display must not fail provisioning."""

    def __init__(self, sink: ProgressCallback | None = None) -> None:
        self._sink = sink

    def __call__(self, stage: str, message: str = "", percent: float | None = None) -> None:
        if self._sink is None:
            return
        try:
            self._sink(ProgressEvent(stage, message, percent))
        except Exception:
            log.exception("progress callback failed for stage %s", stage)

    def copy(self, stage: str, message: str) -> Callable[[float], None]:
        """A qemu-img percentage callback that reports ``stage``/``message`` at each percent."""
        return lambda pct: self(stage, message, pct)


__all__ = ["Progress", "ProgressCallback", "ProgressEvent"]
