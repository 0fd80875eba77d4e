"""Per-computer mutual exclusion across all workers, on Redis.

redis-py's ``Lock`` stores an owner token and releases only when the token matches, so a task can
never release a lock another task owns. The TTL is above the longest hard time limit: a task that
is still running always holds its lock.

The token is the Celery task id. A task redelivered after its worker child was killed (late ack +
``reject_on_worker_lost``) carries the same id, so it takes its own dead predecessor's lock over
at once instead of waiting hours for the TTL. That is safe because the broker redelivers a message
only once its previous holder is gone: the worker was lost, or the visibility timeout (longer than
the hard time limit) passed.

With a ``lease`` the key lives only that long and a heartbeat thread renews it while the task runs:
a child killed by its hard time limit, or a release that Redis did not answer, leaves the computer
locked for one lease, not for the longest time limit. Release never raises: a Redis error there is
logged and must not replace the task's result (the lease then ends the lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import LockError, LockNotOwnedError, RedisError

from worker.hypervisors.errors import TransientError

log = logging.getLogger(__name__)
# Attempts (and pause between them) to release a lock when Redis errors: a blip of a second or two.
RELEASE_ATTEMPTS = 3
RELEASE_PAUSE = 0.5


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


class _Heartbeat(threading.Thread):
    """Renews the lease every third of it until stopped; Redis errors are logged and retried."""

    def __init__(self, lock: Any, lease: int, computer_id: int) -> None:
        super().__init__(name=f"vcl-lock-{computer_id}", daemon=True)
        self.lock, self.lease, self.computer_id = lock, lease, computer_id
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.lease / 3):
            try:
                self.lock.reacquire()
            except LockNotOwnedError:
                # The lease ran out during a Redis outage; take it back unless another task has it.
                if not self.lock.acquire(blocking=False, token=self.lock.local.token):
                    log.error("computer %s: lock lost to another task", self.computer_id)
                    return
            except RedisError as exc:
                log.warning("computer %s: lock lease not renewed: %s", self.computer_id, exc)


def _release(lock: Any, computer_id: int) -> None:
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            lock.release()
            return
        except LockError:
            return  # expired and possibly taken over: not ours any more, nothing to release
        except RedisError as exc:
            if attempt + 1 == RELEASE_ATTEMPTS:
                log.warning(
                    "computer %s: lock not released (%s); it expires with its lease", computer_id, exc
                )
                return
            time.sleep(RELEASE_PAUSE)


def release_if_owner(client: Any, computer_id: int, owner: str) -> bool:
    """Release computer ``computer_id``'s lock if ``owner`` holds it: a delivery that died inside the
    lock after its work was recorded leaves it behind, and its redelivery has nothing left to do."""
    lock = client.lock(computer_lock_name(computer_id), thread_local=False)
    lock.local.token = owner.encode()
    try:
        lock.release()
    except (LockError, RedisError):
        return False
    return True


@contextmanager
def computer_lock(
    client: Any,
    computer_id: int,
    *,
    ttl: int,
    wait: float,
    owner: str | None = None,
    lease: int | None = None,
) -> Iterator[None]:
    """Hold computer ``computer_id`` exclusively; raise :class:`ComputerBusyError` after ``wait`` s.

    Without ``lease`` the key lives ``ttl`` seconds; with it, ``lease`` seconds renewed by a heartbeat."""
    name = computer_lock_name(computer_id)
    timeout = min(ttl, lease) if lease else ttl
    lock = client.lock(name, timeout=timeout, blocking=True, blocking_timeout=wait, thread_local=False)
    if not (owner is not None and _take_over(client, lock, name, owner)) and not lock.acquire(token=owner):
        raise ComputerBusyError(f"computer {computer_id} is being provisioned by another task")
    beat = _Heartbeat(lock, timeout, computer_id) if lease else None
    if beat is not None:
        beat.start()
    try:
        yield
    finally:
        if beat is not None:
            beat.done.set()
            beat.join(timeout=5)
        _release(lock, computer_id)
