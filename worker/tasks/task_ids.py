"""Which Celery task serves a reservation, remembered in Redis so ``vcl-worker status`` can find it.

Written by the dispatcher (a whole pass in one round trip), the CLI's ``enqueue`` and the tasks
themselves; imports nothing but redis, so the dispatcher can use it on a management node.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import redis

_TASK_KEY = "vcl:task:reservation:{}"
_TASK_KEY_TTL = 30 * 24 * 3600


def remember_task_ids(kv: Any, task_ids: Mapping[int, str]) -> None:
    """Record the newest task id of each reservation in ``task_ids`` (reservation id → task id)."""
    # Bookkeeping only: never fail a task or a dispatch for it.
    if not task_ids:
        return
    with suppress(redis.RedisError):
        pipe = kv.pipeline(transaction=False)
        for reservation_id, task_id in task_ids.items():
            pipe.set(_TASK_KEY.format(reservation_id), task_id, ex=_TASK_KEY_TTL)
        pipe.execute()


def task_id_for(kv: Any, reservation_id: int) -> str | None:
    """The task id last remembered for ``reservation_id``, or None."""
    raw = kv.get(_TASK_KEY.format(reservation_id))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


__all__ = ["remember_task_ids", "task_id_for"]
