"""Per-computer mutual exclusion across all workers, on Redis.

redis-py's ``Lock`` stores an owner token and releases only when the token matches, so a task can
never release a lock another task owns. The TTL is above the longest hard time limit: a task that
is still running always holds its lock.

The token is the Celery task id. A task redelivered after its worker child was killed (late ack +
``reject_on_worker_lost``) carries the same id, so it takes its own dead predecessor's lock over
at once instead of waiting hours for the TTL. That is safe because the broker redelivers a message
only once its previous holder is gone: the worker was lost, or the visibility timeout (longer than
the hard time limit) passed.
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


def _take_over(client: Any, lock: Any, name: str, owner: str) -> bool:
    """Adopt a lock that a previous delivery of the same task (same owner token) left behind."""
    stored = client.get(name)
    if stored is None or stored != owner.encode():
        return False
    lock.local.token = stored
    try:
        lock.reacquire()  # atomic: resets the TTL only if the token still matches
    except LockError:
        return False
    return True


@contextmanager
def computer_lock(
    client: Any, computer_id: int, *, ttl: int, wait: float, owner: str | None = None
) -> Iterator[None]:
    """Hold computer ``computer_id`` exclusively; raise :class:`ComputerBusyError` after ``wait`` s."""
    name = computer_lock_name(computer_id)
    lock = client.lock(name, timeout=ttl, blocking=True, blocking_timeout=wait, thread_local=False)
    if not (owner is not None and _take_over(client, lock, name, owner)) and not lock.acquire(token=owner):
        raise ComputerBusyError(f"computer {computer_id} is being provisioned by another task")
    try:
        yield
    finally:
        # LockError: expired and possibly taken over; not ours any more, nothing to release.
        with suppress(LockError):
            lock.release()
