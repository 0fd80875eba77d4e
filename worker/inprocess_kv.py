"""A tiny in-process stand-in for the Redis calls the tasks make (locks, task ids).

Only the embedded demo uses it (``VCL_LOCK_REDIS_URL=memory://``), where broker, worker and
dispatcher share one process and no Redis server is configured. Semantics match what the tasks
rely on: a lock with an owner token and a TTL, and keys with an expiry.
"""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any


class _Lock:
    def __init__(self, kv: InProcessKV, name: str, timeout: float | None, blocking_timeout: float | None):
        self._kv, self._name, self._timeout, self._wait = kv, name, timeout, blocking_timeout
        self.local = SimpleNamespace(token=uuid.uuid4().hex.encode())

    def reacquire(self) -> None:
        with self._kv.cond:
            if self._kv.get(self._name) == self.local.token:
                self._kv.set(self._name, self.local.token, ex=self._timeout)

    def acquire(self, token: str | bytes | None = None) -> bool:
        if token is not None:
            self.local.token = token.encode() if isinstance(token, str) else token
        deadline = None if self._wait is None else time.monotonic() + self._wait
        while True:
            with self._kv.cond:
                if self._kv.get(self._name) is None:
                    self._kv.set(self._name, self.local.token, ex=self._timeout)
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._kv.cond.wait(timeout=0.1 if remaining is None else min(0.1, remaining))

    def release(self) -> None:
        with self._kv.cond:
            if self._kv.get(self._name) == self.local.token:
                self._kv.delete(self._name)
            self._kv.cond.notify_all()


class InProcessKV:
    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self._data: dict[str, tuple[bytes, float | None]] = {}

    def set(self, key: str, value: str | bytes, ex: float | None = None) -> bool:
        raw = value.encode() if isinstance(value, str) else value
        with self.cond:
            self._data[key] = (raw, None if ex is None else time.monotonic() + ex)
        return True

    def get(self, key: str) -> bytes | None:
        with self.cond:
            item = self._data.get(key)
            if item is None:
                return None
            if item[1] is not None and item[1] < time.monotonic():
                del self._data[key]
                return None
            return item[0]

    def delete(self, key: str) -> None:
        with self.cond:
            self._data.pop(key, None)

    def incr(self, key: str, amount: int = 1) -> int:
        """Redis INCR: a missing key counts from 0; the expiry is kept."""
        with self.cond:
            current = self.get(key)
            value = int(current or b"0") + amount
            expires = self._data[key][1] if key in self._data else None
            self._data[key] = (str(value).encode(), expires)
            return value

    def expire(self, key: str, seconds: float) -> bool:
        with self.cond:
            if self.get(key) is None:
                return False
            self._data[key] = (self._data[key][0], time.monotonic() + seconds)
            return True

    def pipeline(self, *, transaction: bool = False) -> InProcessKV:
        """Redis's non-transactional pipeline: here every command runs at once."""
        return self

    def execute(self) -> list[Any]:
        return []

    def lock(
        self, name: str, timeout: float | None = None, blocking_timeout: float | None = None, **_: Any
    ) -> _Lock:
        return _Lock(self, name, timeout, blocking_timeout)
