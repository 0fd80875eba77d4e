"""The four VCL tasks: ``vcl.load``, ``vcl.reload``, ``vcl.capture``, ``vcl.maintenance``.

Each takes a reservation id. The flows live in :mod:`worker.tasks.flows` and
:mod:`worker.tasks.capture_flow` (over :mod:`worker.tasks.claimed`); this module maps them onto
Celery: their dependencies resolved once per delivery (:class:`~worker.tasks.deps.TaskDeps`),
progress through ``update_state('PROGRESS')``, bounded retries with exponential backoff and jitter
for transient errors only (libvirt connection, database connection, Redis, a busy computer), late
acks and redelivery when the worker child dies (the flows are idempotent), and the reservation
failures the flows already recorded logged by Celery as expected (``throws``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import redis
import sqlalchemy.exc
from celery import Task
from celery.signals import worker_process_init

from worker import wiring as runtime
from worker.actions import BY_NAME
from worker.app import app, vmhost_of_queue, vmhost_queue
from worker.hypervisors.errors import TransientError

from . import capture_flow, flows
from .claimed import TaskHooks
from .deps import TaskDeps
from .host_check import WrongHostError
from .outcomes import EXPECTED_FAILURES, AlreadyHandled, ReservationFailed, skipped
from .task_ids import remember_task_ids

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


class Flow(Protocol):
    """``run_load``, ``run_capture``, ``run_maintenance``: a reservation's claimed work."""

    def __call__(self, hooks: TaskHooks, reservation_id: int, *, deps: TaskDeps) -> dict[str, Any]: ...


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    # Never reuse the parent's database pool or Redis socket in a forked child.
    runtime.reset_after_fork()


class VclTask(Task):  # type: ignore[misc]
    """Base of the VCL tasks: late ack, requeue on worker loss, Celery's bounded transient retries.

    ``autoretry_for`` + ``retry_backoff`` are Celery's own retry helpers: a transient error (libvirt
    connection, database, Redis, a busy computer) is retried with exponential backoff and jitter; the
    flows record the reservation's failure themselves on the last attempt (``may_retry``). A failure
    they recorded (ReservationFailed) is expected: ``throws`` has Celery log it without a traceback.
    """

    acks_late = True
    reject_on_worker_lost = True
    track_started = True
    autoretry_for = TRANSIENT_ERRORS
    max_retries = MAX_RETRIES
    retry_backoff = BACKOFF_BASE
    retry_backoff_max = BACKOFF_MAX
    retry_jitter = True
    throws = EXPECTED_FAILURES
    soft_time_limit = _SETTINGS.load_soft_time_limit
    time_limit = _SETTINGS.load_time_limit

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery's failure handler: retries exhausted (in the child) or the hard time limit (Celery
        calls it in the worker's main process). The reservation ends the way vcld ends a failure,
        never in silence; the flows already recorded their own failures (the store's guards make
        this a no-op then). If the database is down too, the dispatcher's sweep fails it later."""
        if self.name not in CLAIMING_TASKS or isinstance(exc, ReservationFailed):
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


class DelegatedTask(CaptureTask):
    """``vcl.call``: vcld waits for it a bounded time (the CLI's timeout, sent as ``expires`` and as
    the call's deadline), so nothing retries it automatically: a retry could act after vcld gave up,
    on a computer someone else uses by then. Its only retries are re-routes to the right VM host."""

    autoretry_for = ()
    max_retries = 3


def delivery_deps(task: Task) -> TaskDeps:
    """The process's dependencies for this delivery, with the VM host this worker serves
    (``VCL_VMHOST``, else the host its queue names)."""
    deps = runtime.task_deps()
    delivery = getattr(task.request, "delivery_info", None) or {}
    host = deps.settings.vmhost or vmhost_of_queue(delivery.get("routing_key"))
    return deps if not host else replace(deps, vmhost=host)


def reroute(task: Task, exc: WrongHostError) -> BaseException:
    """Send the task to the queue of the host its computer is on (Celery's retry with another queue:
    same task id, one of its retries); raise ``exc`` when there is no such host or retries are spent."""
    log.warning("%s; re-routed to %s", exc, exc.right_host)
    if exc.right_host is None or not task.request.id:
        return exc
    return task.retry(exc=exc, countdown=0, queue=vmhost_queue(exc.right_host))  # type: ignore[no-any-return]


def count_delivery(task: Task, deps: TaskDeps) -> int:
    """How often this attempt (task id and retry number) was delivered, this one included; 0 when
    not counted (no task id, or Redis unavailable: bookkeeping only)."""
    task_id = task.request.id
    if not task_id:
        return 0
    key = _DELIVERY_KEY.format(task_id, int(task.request.retries))
    try:
        count = int(deps.kv.incr(key))
        deps.kv.expire(key, deps.settings.visibility_timeout)
    except redis.RedisError:
        return 0
    return count


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


def _run(task: Task, flow: Flow, reservation_id: int) -> dict[str, Any]:
    reservation_id = int(reservation_id)
    # The one place a delivery reads the process's wiring: everything below gets it explicitly.
    deps = delivery_deps(task)
    if task.request.id:
        remember_task_ids(deps.kv, {reservation_id: str(task.request.id)})
    hooks = _Hooks(task, reservation_id)
    _bound_deliveries(task, reservation_id, deps)
    try:
        return flow(hooks, reservation_id, deps=deps)
    except AlreadyHandled as exc:
        log.info("reservation %s: %s", reservation_id, exc)
        return skipped(reservation_id, str(exc))
    except WrongHostError as exc:
        raise reroute(task, exc) from None
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


def _bound_deliveries(task: Task, reservation_id: int, deps: TaskDeps) -> None:
    """A message whose child dies (late ack + reject_on_worker_lost) comes back; one that kills
    every child it reaches would come back forever. Count the deliveries of this attempt (task id
    and retry number) and fail the reservation instead of running it once the bound is passed."""
    # Without Redis (count 0) the task runs unbounded rather than not at all.
    count = count_delivery(task, deps)
    if count <= deps.settings.max_deliveries:
        return
    message = f"{task.name}: delivered {count} times, the worker child died each time; giving up"
    deps.store.fail_stranded(reservation_id, str(task.request.id), message)
    raise ReservationFailed(message)


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["load"].task_name,
)
def load(self: Task, reservation_id: int) -> dict[str, Any]:
    """Load the reservation's image on its computer (request ``new`` → ``reserved``)."""
    return _run(self, partial(flows.run_load, action="load"), reservation_id)


@app.task(
    bind=True,
    base=VclTask,
    name=BY_NAME["reload"].task_name,
)
def reload(self: Task, reservation_id: int) -> dict[str, Any]:
    """Reload a computer (request ``reload`` → ``complete``, computer ``available``)."""
    return _run(self, partial(flows.run_load, action="reload"), reservation_id)


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


__all__ = [
    "DelegatedTask",
    "capture",
    "count_delivery",
    "delivery_deps",
    "load",
    "maintenance",
    "reload",
    "reroute",
]
