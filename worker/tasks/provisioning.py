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

from . import capture_flow, flows

log = logging.getLogger(__name__)

# Errors worth retrying: the next attempt may well succeed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
)
# Read once at import: Celery needs the limits as class attributes when the tasks are registered.
_SETTINGS = runtime.settings()
# Celery's own exponential backoff (retry_backoff): 2, 4, 8 ... s, each with full jitter, capped at
# BACKOFF_MAX, which the default 10 retries reach (2 * 2**9 > 300): ~20 minutes of retries in all.
MAX_RETRIES = _SETTINGS.task_max_retries
BACKOFF_BASE = 2
BACKOFF_MAX = _SETTINGS.retry_backoff_max
#: The tasks whose argument is a reservation with a claimed request (not ``vcl.call``).
CLAIMING_TASKS = frozenset(a.task_name for a in BY_NAME.values())
_DELIVERY_KEY = "vcl:deliveries:{}:{}"


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

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery's failure handler: retries exhausted (in the child) or the hard time limit (Celery
        calls it in the worker's main process). The reservation ends the way vcld ends a failure,
        never in silence; the flows already recorded their own failures (the store's guards make
        this a no-op then). If the database is down too, the dispatcher's sweep fails it later."""
        if self.name not in CLAIMING_TASKS or isinstance(exc, flows.ReservationFailed):
            return
        reservation_id = args[0] if args else (kwargs or {}).get("reservation_id")
        if reservation_id is None:
            return
        message = f"{self.name}: {type(exc).__name__}: {exc}"
        try:
            if runtime.store().fail_stranded(int(reservation_id), task_id, message):
                log.error("reservation %s failed: %s", reservation_id, message)
        except Exception:
            log.exception("reservation %s: failure not recorded; the sweep will", reservation_id)


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
    _bound_deliveries(task, reservation_id)
    try:
        return flow(hooks, reservation_id, *extra)
    except flows.AlreadyHandled as exc:
        log.info("reservation %s: %s", reservation_id, exc)
        return {"reservation_id": reservation_id, "status": "skipped", "detail": str(exc)}
    except TRANSIENT_ERRORS as exc:
        # autoretry_for turns this into a backed-off retry (or the final failure once retries are spent).
        log.warning(
            "reservation %s: transient error, retry %s of %s: %s",
            reservation_id,
            int(task.request.retries) + 1,
            int(task.max_retries),
            exc,
        )
        raise


def _bound_deliveries(task: Task, reservation_id: int) -> None:
    """A message whose child dies (late ack + reject_on_worker_lost) comes back; one that kills
    every child it reaches would come back forever. Count the deliveries of this attempt (task id
    and retry number) and fail the reservation instead of running it once the bound is passed."""
    task_id = task.request.id
    if not task_id:
        return
    key = _DELIVERY_KEY.format(task_id, int(task.request.retries))
    try:
        count = int(runtime.lock_redis().incr(key))
        runtime.lock_redis().expire(key, _SETTINGS.visibility_timeout)
    except redis.RedisError:
        return  # bookkeeping only: without Redis the task runs unbounded rather than not at all
    if count <= _SETTINGS.max_deliveries:
        return
    message = f"{task.name}: delivered {count} times, the worker child died each time; giving up"
    runtime.store().fail_stranded(reservation_id, str(task_id), message)
    raise flows.ReservationFailed(message)


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
    return _run(self, capture_flow.run_capture, reservation_id)


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["maintenance"].task_name,
)
def maintenance(self: Task, reservation_id: int) -> dict[str, Any]:
    """Take a computer out of service (request ``tomaintenance``): remove its domains."""
    return _run(self, flows.run_maintenance, reservation_id)


__all__ = ["capture", "load", "maintenance", "reload"]
