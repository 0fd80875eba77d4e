"""How a unit of claimed work ends: done (a :class:`Summary`), skipped (:class:`AlreadyHandled`) or
failed with the reservation's failure already recorded (:class:`ReservationFailed`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ReservationFailed(Exception):
    """The reservation failed permanently; its request/computer states were already recorded."""


class AlreadyHandled(Exception):
    """The request is no longer ours to process (another task finished or took it): stand down."""


class RequestDeleted(AlreadyHandled):
    """The user ended the reservation while this task held its claim (the web's ``deleteRequest``
    turned ``pending/<state>`` into ``deleted``; vcld's ``is_request_deleted``), or the request is
    gone: the task stands down and hands the computer back (:mod:`worker.db.cancel`)."""


#: Failures a task expects: Celery logs them as such (``Task.throws``), without a traceback.
EXPECTED_FAILURES: tuple[type[Exception], ...] = (ReservationFailed, AlreadyHandled)


class TaskStatus(StrEnum):
    """``status`` of a task result (a StrEnum: JSON and string comparisons see the bare value)."""

    DONE = "done"
    SKIPPED = "skipped"


@dataclass
class Summary:
    """The task result: a small JSON-able record of what happened."""

    action: str
    reservation_id: int
    request_id: int | None = None
    status: TaskStatus = TaskStatus.DONE
    computer: str | None = None
    vmhost: str | None = None
    domain: str | None = None
    disks: dict[str, str] = field(default_factory=dict)
    request_state: str | None = None
    detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # True when this load copied the master from the repository (image distribution).
    master_copied: bool = False
    # How the user reaches the guest: address, the port that answered, its banner, the domain type.
    address: str | None = None
    port: int | None = None
    banner: str | None = None
    domain_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def skipped(reservation_id: int, detail: str) -> dict[str, Any]:
    """The result of a delivery that stood down (:class:`AlreadyHandled`)."""
    return {"reservation_id": reservation_id, "status": TaskStatus.SKIPPED, "detail": detail}


__all__ = [
    "EXPECTED_FAILURES",
    "AlreadyHandled",
    "RequestDeleted",
    "ReservationFailed",
    "Summary",
    "TaskStatus",
    "skipped",
]
