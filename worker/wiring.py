"""Process-wide resources of a worker process: settings, the VCL store, Redis.

Everything is created lazily *in the process that uses it*, so a prefork child never inherits a
database pool or socket from its parent (see ``reset_after_fork``).
"""

from __future__ import annotations

import threading
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis

from worker.config import Settings, get_settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.store import VclStore
from worker.inprocess_kv import InProcessKV

_TASK_KEY = "vcl:task:reservation:{}"
_TASK_KEY_TTL = 30 * 24 * 3600


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


def remember_task(reservation_id: int, task_id: str) -> None:
    """Record the newest task of a reservation so ``vcl-worker status`` can find it."""
    remember_tasks({reservation_id: task_id})


def remember_tasks(task_ids: dict[int, str]) -> None:
    """:func:`remember_task` for a whole dispatcher pass in one round trip."""
    # Bookkeeping only: never fail a task or a dispatch for it.
    if not task_ids:
        return
    with suppress(redis.RedisError):
        pipe = lock_redis().pipeline(transaction=False)
        for reservation_id, task_id in task_ids.items():
            pipe.set(_TASK_KEY.format(reservation_id), task_id, ex=_TASK_KEY_TTL)
        pipe.execute()


def task_for_reservation(reservation_id: int) -> str | None:
    raw = lock_redis().get(_TASK_KEY.format(reservation_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
