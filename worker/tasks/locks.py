"""Per-computer mutual exclusion across all workers, on Redis.

redis-py's ``Lock`` stores a random token and releases only when the token matches, so a task can
never release a lock another task owns. The TTL is above the longest hard time limit: a task that
is still running always holds its lock, while a crashed worker's lock expires on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from redis.exceptions import LockError

from worker.hypervisors.errors import TransientError


class ComputerBusyError(TransientError):
    """Another task holds this computer's lock; the task is retried later."""


def computer_lock_name(computer_id: int) -> str:
    return f"vcl:lock:computer:{computer_id}"


@contextmanager
def computer_lock(client: Any, computer_id: int, *, ttl: int, wait: float) -> Iterator[None]:
    """Hold computer ``computer_id`` exclusively; raise :class:`ComputerBusyError` after ``wait`` s."""
    lock = client.lock(
        computer_lock_name(computer_id),
        timeout=ttl,
        blocking=True,
        blocking_timeout=wait,
        thread_local=False,
    )
    if not lock.acquire():
        raise ComputerBusyError(f"computer {computer_id} is being provisioned by another task")
    try:
        yield
    finally:
        # LockError: expired and possibly taken over; not ours any more, nothing to release.
        with suppress(LockError):
            lock.release()
