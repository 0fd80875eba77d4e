"""Per-computer mutual exclusion across all workers, on Redis.

redis-py's ``Lock`` stores an owner token and releases only when the token matches, so a task can
never release a lock another task owns.

The token identifies one *delivery* (:func:`delivery_token`: the Celery task id plus a value drawn
per delivery), never the task id alone: a redelivered copy of a message (the child was killed, or
the broker gave the message out again while the first copy still runs) does not adopt the first
copy's lock; it waits for it like any other task. A dead predecessor's lock ends with its lease
(``lease`` < ``VCL_LOCK_WAIT``), so the redelivered copy gets the computer within one lease.

With a ``lease`` the key lives only that long and a heartbeat thread renews it while the task runs:
a child killed by its hard time limit, or a release that Redis did not answer, leaves the computer
locked for one lease, not for the longest time limit. A heartbeat that finds the lock gone or taken
marks the hold lost (:class:`HeldLock`): the task checks it before its next destructive step
(:meth:`HeldLock.check` raises :class:`LockLostError`). Release never raises: a Redis error there is
logged and must not replace the task's result (the lease then ends the lock).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
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


class LockLostError(TransientError):
    """The lease ran out and the lock is gone or another task's: this delivery must not touch the
    computer again. Transient: the retry takes the lock again (waiting for whoever holds it now) and
    re-checks the claim, so the work is neither abandoned nor done twice at once."""


def computer_lock_name(computer_id: int) -> str:
    return f"vcl:lock:computer:{computer_id}"


def delivery_token(task_id: str | None) -> str | None:
    """The lock token of one delivery of task ``task_id``: ``<task id>:<random>``."""
    return None if task_id is None else f"{task_id}:{uuid.uuid4().hex[:12]}"


class HeldLock:
    """What the holder of a computer lock sees: whether the heartbeat lost it."""

    def __init__(self, computer_id: int) -> None:
        self.computer_id = computer_id
        self.lost = threading.Event()

    def check(self) -> None:
        """Raise :class:`LockLostError` once the heartbeat found the lock gone or taken."""
        if self.lost.is_set():
            raise LockLostError(f"computer {self.computer_id}: lock lease lost; stopped before the next step")


class _Heartbeat(threading.Thread):
    """Renews the lease every third of it until stopped; Redis errors are logged and retried. A lock
    found gone (and not retaken) or owned by another token sets ``held.lost`` and ends the beat."""

    def __init__(self, client: Any, lock: Any, lease: int, held: HeldLock) -> None:
        super().__init__(name=f"vcl-lock-{held.computer_id}", daemon=True)
        self.client, self.lock, self.lease, self.held = client, lock, lease, held
        self.done = threading.Event()

    def _still_ours(self) -> bool:
        return bool(self.client.get(computer_lock_name(self.held.computer_id)) == self.lock.local.token)

    def run(self) -> None:
        while not self.done.wait(self.lease / 3):
            try:
                try:
                    self.lock.reacquire()
                except LockNotOwnedError:
                    # The lease ran out (e.g. during a Redis outage); take it back unless another has it.
                    self.lock.acquire(blocking=False, token=self.lock.local.token)
                if not self._still_ours():
                    log.error("computer %s: lock lost (lease ran out or taken)", self.held.computer_id)
                    self.held.lost.set()
                    return
            except RedisError as exc:
                log.warning("computer %s: lock lease not renewed: %s", self.held.computer_id, exc)


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


@contextmanager
def computer_lock(
    client: Any,
    computer_id: int,
    *,
    ttl: int,
    wait: float,
    owner: str | None = None,
    lease: int | None = None,
) -> Iterator[HeldLock]:
    """Hold computer ``computer_id`` exclusively with token ``owner`` (one delivery's, see
    :func:`delivery_token`); raise :class:`ComputerBusyError` after ``wait`` s.

    Without ``lease`` the key lives ``ttl`` seconds; with it, ``lease`` seconds renewed by a heartbeat
    whose loss the yielded :class:`HeldLock` reports."""
    name = computer_lock_name(computer_id)
    timeout = min(ttl, lease) if lease else ttl
    lock = client.lock(name, timeout=timeout, blocking=True, blocking_timeout=wait, thread_local=False)
    if not lock.acquire(token=owner):
        raise ComputerBusyError(f"computer {computer_id} is being provisioned by another task")
    held = HeldLock(computer_id)
    beat = _Heartbeat(client, lock, timeout, held) if lease else None
    if beat is not None:
        beat.start()
    try:
        yield held
    finally:
        if beat is not None:
            beat.done.set()
            beat.join(timeout=5)
        _release(lock, computer_id)
