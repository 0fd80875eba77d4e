"""The four VCL tasks: ``vcl.load``, ``vcl.reload``, ``vcl.capture``, ``vcl.maintenance``.

Each takes a reservation id. The flow itself lives in :mod:`worker.tasks.flows`; this module maps it
onto Celery: progress through ``update_state('PROGRESS')``, bounded retries with exponential backoff
and jitter for transient errors only (libvirt connection, database connection, Redis, a busy
computer), late acks and redelivery when the worker child dies (the flows are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy.exc
from celery import Task
from celery.signals import worker_process_init

from worker import wiring as runtime
from worker.actions import BY_NAME
from worker.app import app
from worker.hypervisors.errors import TransientError

from . import flows

log = logging.getLogger(__name__)

# Errors worth retrying: the next attempt may well succeed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
)
MAX_RETRIES = 5
# Celery's own exponential backoff (retry_backoff): 2, 4, 8, 16, 32 s, each with full jitter, capped.
BACKOFF_BASE = 2
BACKOFF_MAX = 600

# Read once at import: Celery needs the limits as class attributes when the tasks are registered.
_SETTINGS = runtime.settings()


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    # Never reuse the parent's database pool or Redis socket in a forked child.
    runtime.reset_after_fork()


class VclTask(Task):  # type: ignore[misc]
    """Base of the VCL tasks: late ack, requeue on worker loss, Celery's bounded transient retries.

    ``autoretry_for`` + ``retry_backoff`` are Celery's own retry helpers: a transient error (libvirt
    connection, database, Redis, a busy computer) is retried with exponential backoff and jitter; the
    flows record the reservation's failure themselves on the last attempt (``may_retry``).
    """

    acks_late = True
    reject_on_worker_lost = True
    track_started = True
    autoretry_for = TRANSIENT_ERRORS
    max_retries = MAX_RETRIES
    retry_backoff = BACKOFF_BASE
    retry_backoff_max = BACKOFF_MAX
    retry_jitter = True
    soft_time_limit = _SETTINGS.load_soft_time_limit
    time_limit = _SETTINGS.load_time_limit


class CaptureTask(VclTask):
    """Captures copy a whole disk: they get their own, longer limits."""

    soft_time_limit = _SETTINGS.capture_soft_time_limit
    time_limit = _SETTINGS.capture_time_limit


class _Hooks:
    def __init__(self, task: Task, reservation_id: int) -> None:
        self.task = task
        self.reservation_id = reservation_id

    def progress(self, stage: str, percent: float, message: str = "") -> None:
        if not self.task.request.id:
            return  # called directly (not through a worker): no state to update
        self.task.update_state(
            state="PROGRESS",
            meta={
                "reservation_id": self.reservation_id,
                "stage": stage,
                "percent": round(percent, 1),
                "message": message,
            },
        )

    @property
    def owner(self) -> str | None:
        return str(self.task.request.id) if self.task.request.id else None

    def may_retry(self) -> bool:
        return int(self.task.request.retries) < int(self.task.max_retries)


def _run(task: Task, flow: Callable[..., dict[str, Any]], reservation_id: int, *extra: Any) -> dict[str, Any]:
    reservation_id = int(reservation_id)
    if task.request.id:
        runtime.remember_task(reservation_id, task.request.id)
    hooks = _Hooks(task, reservation_id)
    try:
        return flow(hooks, reservation_id, *extra)
    except flows.AlreadyHandled as exc:
        log.info("reservation %s: %s", reservation_id, exc)
        return {"reservation_id": reservation_id, "status": "skipped", "detail": str(exc)}
    except TRANSIENT_ERRORS as exc:
        # autoretry_for turns this into a backed-off retry (or the final failure once retries are spent).
        log.warning(
            "reservation %s: transient error (attempt %s): %s",
            reservation_id,
            int(task.request.retries) + 1,
            exc,
        )
        raise


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["load"].task_name,
)
def load(self: Task, reservation_id: int) -> dict[str, Any]:
    """Load the reservation's image on its computer (request ``new`` → ``reserved``)."""
    return _run(self, flows.run_load, reservation_id, "load")


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["reload"].task_name,
)
def reload(self: Task, reservation_id: int) -> dict[str, Any]:
    """Reload a computer (request ``reload`` → ``complete``, computer ``available``)."""
    return _run(self, flows.run_load, reservation_id, "reload")


@app.task(
    bind=True,
    base=CaptureTask,
    name=BY_NAME["capture"].task_name,
)
def capture(self: Task, reservation_id: int) -> dict[str, Any]:
    """Capture the computer's disk as the new image revision (request ``image``)."""
    return _run(self, flows.run_capture, reservation_id)


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["maintenance"].task_name,
)
def maintenance(self: Task, reservation_id: int) -> dict[str, Any]:
    """Take a computer out of service (request ``tomaintenance``): remove its domains."""
    return _run(self, flows.run_maintenance, reservation_id)


__all__ = ["capture", "load", "maintenance", "reload"]
