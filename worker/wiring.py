"""Process-wide resources of a worker process: settings, the VCL store, Redis.

Everything is created lazily *in the process that uses it*, so a prefork child never inherits a
database pool or socket from its parent (see ``reset_after_fork``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis

from worker.config import Settings, get_settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.store import VclStore
from worker.inprocess_kv import InProcessKV
from worker.tasks.deps import TaskDeps
from worker.tasks.task_ids import remember_task_ids, task_id_for


@dataclass
class _Runtime:
    settings: Settings | None = None
    store: VclStore | None = None
    redis: Any = None


_state = _Runtime()
_guard = threading.Lock()


def configure(settings: Settings | None = None, store: VclStore | None = None) -> None:
    """Replace this process's settings and/or store (the embedded demo and tests use this)."""
    with _guard:
        if settings is not None:
            _state.settings = settings
            _state.redis = None
        if store is not None or settings is not None:
            _state.store = store


def settings() -> Settings:
    if _state.settings is None:
        _state.settings = get_settings()
    return _state.settings


def store() -> VclStore:
    with _guard:
        if _state.store is None:
            engine = make_engine(settings().database_url)
            _state.store = VclStore(make_session_factory(engine))
        return _state.store


def lock_redis() -> Any:
    """Redis for locks and task bookkeeping (an in-process stand-in for ``memory://``)."""
    with _guard:
        if _state.redis is None:
            url = settings().lock_redis_url
            if url.startswith("memory://"):
                _state.redis = InProcessKV()
            else:
                _state.redis = redis.Redis.from_url(url)
        return _state.redis


def reset_after_fork() -> None:
    """Drop inherited connections; the child opens its own on first use."""
    with _guard:
        if not isinstance(_state.redis, InProcessKV):
            _state.redis = None
        _state.store = None


def vmhost_for_reservation(reservation_id: int) -> str | None:
    """Short name of the VM host that serves ``reservation_id`` (for routing), or None."""
    return store().vmhost_short_name(reservation_id)


def task_deps() -> TaskDeps:
    """Everything a task delivery needs from this process, resolved once at the task's entry."""
    return TaskDeps(store=store(), settings=settings(), kv=lock_redis())


def remember_task(reservation_id: int, task_id: str) -> None:
    """Record the newest task of a reservation so ``vcl-worker status`` can find it."""
    remember_task_ids(lock_redis(), {reservation_id: task_id})


def task_for_reservation(reservation_id: int) -> str | None:
    return task_id_for(lock_redis(), reservation_id)
