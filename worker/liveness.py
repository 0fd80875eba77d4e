"""Is a claimed task still alive? What the dispatcher's sweep asks Celery (no libvirt, no SQL).

* :func:`task_infos`: each task's Celery state and when it was stored (one ``MGET`` on a key-value
  result backend such as Redis);
* :func:`held_tasks`: which of the given tasks some answering worker holds (Celery's own inspection,
  ``query_task``: active, reserved or scheduled for a retry's countdown). A worker that was killed
  whole (SIGKILL of the main process, the host lost) answers nothing, and a worker restarted under the
  same name does not hold the task: its message waits, unacknowledged, for the broker's visibility
  timeout (hours, above the longest time limit).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import Celery
from celery.backends.base import KeyValueStoreBackend

from worker.actions import BY_STATE
from worker.config import Settings
from worker.db.sweep import PendingClaim

log = logging.getLogger(__name__)

#: Seconds the sweep waits for the workers' replies to one inspection.
INSPECT_TIMEOUT = 2.0
#: Celery states of a task that is over.
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


@dataclass(frozen=True, slots=True)
class TaskInfo:
    state: str  # Celery state; PENDING when the backend does not know the task
    stored_at: float | None = None  # epoch seconds the state was stored (None: unknown)


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str) and value:
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def task_infos(celery_app: Celery, task_ids: list[str]) -> dict[str, TaskInfo]:
    """Celery state of each task and when it was stored: one ``MGET`` on a key-value result backend
    (Redis), else one lookup per task."""
    backend = celery_app.backend
    if task_ids and isinstance(backend, KeyValueStoreBackend):
        try:
            values = backend.mget([backend.get_key_for_task(t) for t in task_ids])
        except NotImplementedError:
            pass
        else:
            out: dict[str, TaskInfo] = {}
            for t, v in zip(task_ids, values, strict=True):
                if v is None:
                    out[t] = TaskInfo("PENDING")
                    continue
                meta = backend.decode_result(v)
                out[t] = TaskInfo(str(meta["status"]), _epoch(meta.get("date_done")))
            return out
    return {t: TaskInfo(str(celery_app.AsyncResult(t).state)) for t in task_ids}


def held_tasks(celery_app: Celery, task_ids: list[str], timeout: float = INSPECT_TIMEOUT) -> set[str] | None:
    """The tasks of ``task_ids`` some answering worker holds (active, reserved or scheduled); None when
    the inspection itself failed (broker unreachable): then nothing may be judged gone by it."""
    if not task_ids:
        return set()
    try:
        replies = celery_app.control.inspect(timeout=timeout).query_task(*task_ids) or {}
    except Exception as exc:  # the broker: the sweep falls back on its time bounds
        log.warning("sweep: workers not inspected: %s", exc)
        return None
    held: set[str] = set()
    for tasks in replies.values():
        held.update(t for t in (tasks or {}) if t in task_ids)
    return held


def running_bound(settings: Settings, task_name: str, state: str) -> float:
    """Seconds a running task's state may stay unchanged before the sweep calls it dead whatever the
    inspection says: one attempt's hard time limit (Celery kills it then and records FAILURE), plus the
    longest retry countdown for a RETRY, plus the grace period."""
    limit = (
        settings.capture_time_limit if task_name == BY_STATE["image"].task_name else settings.load_time_limit
    )
    return limit + (settings.retry_backoff_max if state == "RETRY" else 0) + settings.sweep_grace


def gone_tasks(
    celery_app: Celery,
    claims: list[PendingClaim],
    infos: dict[str, TaskInfo],
    grace: float,
    *,
    settings: Settings,
) -> set[str]:
    """Task ids of running (STARTED/RETRY/PROGRESS) claims older than ``grace`` whose task no worker
    holds (Celery's inspection; a RETRY only once its longest countdown has passed too), or whose state
    is older than :func:`running_bound`. The states are read again after the inspection: a task that
    finished meanwhile is not gone."""
    now = time.time()
    candidates: dict[str, PendingClaim] = {}
    for c in claims:
        info = infos.get(c.record.task_id)
        if info is not None and info.state not in FINISHED and info.state != "PENDING" and c.age >= grace:
            candidates[c.record.task_id] = c
    if not candidates:
        return set()
    held = held_tasks(celery_app, list(candidates))
    gone: set[str] = set()
    for tid, c in candidates.items():
        info = infos[tid]
        quiet = now - info.stored_at if info.stored_at is not None else 0.0
        # Longer than one attempt may last: dead, whatever the inspection says.
        stale = quiet > running_bound(settings, BY_STATE[c.claimed_from].task_name, info.state)
        # No worker holds it (a RETRY's next attempt may wait in the queue for its countdown).
        unheld = held is not None and tid not in held
        if stale or (unheld and (info.state != "RETRY" or quiet >= settings.retry_backoff_max + grace)):
            gone.add(tid)
    again = task_infos(celery_app, sorted(gone))
    return {t for t in gone if again[t] == infos[t]}


__all__ = ["INSPECT_TIMEOUT", "TaskInfo", "gone_tasks", "held_tasks", "running_bound", "task_infos"]
