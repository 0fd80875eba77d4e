"""What a task needs from its process, resolved once at the task's entry and passed down explicitly.

The flows never reach for the process's globals (:mod:`worker.wiring`) half-way through: the Celery
task body builds one :class:`TaskDeps` (``wiring.task_deps()``), and tests, the bench and the demo
hand over exactly the store, settings and Redis they want.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.db.store import VclStore


@dataclass(frozen=True)
class TaskDeps:
    store: VclStore
    settings: Settings
    # Redis (or worker.inprocess_kv.InProcessKV for memory://): computer locks and task bookkeeping.
    kv: Any
    # Wall clock for the lock's locked_at/unlocked_at: comparable across hosts, unlike a monotonic one.
    clock: Callable[[], float] = time.time
    # The VM host this delivery was routed to (its queue ``vmhost.<host>``): a reservation whose
    # computer is on another host is refused (worker.tasks.host_check). None: not checked (a call
    # made in-process, or a message on a queue that names no host).
    vmhost: str | None = None


__all__ = ["TaskDeps"]
