"""The per-computer lock on a real Redis (issue 18): the token names one delivery, so a redelivered
copy of a message waits for the first copy instead of running alongside it, and gets the computer
within one lease once the first copy is dead; a lease found lost stops the flow before its next
destructive step; the reaper's locks are leases renewed while it works."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from worker.devkit.services import PrivateRedis, free_port, wait_until
from worker.hypervisors.errors import TransientError
from worker.reaper import computer_locks
from worker.tasks.claimed import ClaimedWork
from worker.tasks.locks import (
    ComputerBusyError,
    LockLostError,
    computer_lock,
    computer_lock_name,
    delivery_token,
)
from worker.tasks.provisioning import TRANSIENT_ERRORS

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    rds = PrivateRedis(free_port(), tmp_path_factory.mktemp("locks-redis"))
    rds.start()
    try:
        yield redis.Redis.from_url(f"{rds.url}/0")
    finally:
        rds.stop()


def test_a_redelivered_copy_waits_instead_of_running_alongside(kv: redis.Redis) -> None:
    first, second = delivery_token("task-7"), delivery_token("task-7")  # two deliveries, one task id
    assert first is not None and second is not None and first != second
    name = computer_lock_name(1)
    with computer_lock(kv, 1, ttl=60, wait=1, owner=first, lease=30):
        started = time.monotonic()
        with pytest.raises(ComputerBusyError), computer_lock(kv, 1, ttl=60, wait=1.5, owner=second, lease=30):
            pytest.fail("the redelivered copy ran alongside the first")
        assert time.monotonic() - started >= 1.4  # it waited for the lock
        assert kv.get(name) == first.encode()
    assert kv.get(name) is None


def test_a_dead_deliverys_lock_ends_with_its_lease(kv: redis.Redis) -> None:
    name = computer_lock_name(2)
    # What a child killed inside the lock leaves: its token, renewed no more, with a 3 s lease.
    kv.set(name, cast(str, delivery_token("task-8")), ex=3)
    started = time.monotonic()
    with computer_lock(kv, 2, ttl=60, wait=10, owner=delivery_token("task-8"), lease=3):
        waited = time.monotonic() - started
    assert 1.0 < waited < 4.5, waited


def test_a_lost_lease_stops_the_flow_before_its_next_step(kv: redis.Redis) -> None:
    name = computer_lock_name(3)
    steps: list[str] = []
    with computer_lock(kv, 3, ttl=60, wait=1, owner=delivery_token("task-9"), lease=3) as held:
        kv.set(name, b"another-task", ex=60)  # the lease lapsed and another task took the computer
        wait_until(held.lost.is_set, 5, "the heartbeat to find the lock taken")
        work = ClaimedWork(
            deps=cast(Any, None), hooks=cast(Any, None), from_state="new", request_id=1,
            outcome=cast(Any, None), reservation=cast(Any, None), provisioner=cast(Any, None),
            summary=cast(Any, None), stopwatch=cast(Any, None), held=held,
        )  # fmt: skip
        with pytest.raises(LockLostError):
            work.still_ours()  # what a flow calls before each destructive step
            steps.append("remove the domain")
    assert steps == []
    assert kv.get(name) == b"another-task"  # the release left the other task's lock alone
    # Retried by Celery (transient), not a failure and not a silent stand-down.
    assert issubclass(LockLostError, TransientError) and issubclass(LockLostError, TRANSIENT_ERRORS)
    kv.delete(name)


def test_the_reapers_locks_are_renewed_while_it_works(kv: redis.Redis) -> None:
    names = [computer_lock_name(c) for c in (4, 5)]
    with computer_locks(kv, [5, 4], lease=3) as held:
        time.sleep(4.5)  # longer than the lease: only the heartbeat keeps the locks
        for name in names:
            ttl = int(kv.pttl(name))
            assert 0 < ttl <= 3000, (name, ttl)  # a lease, not the 300 s TTL
        assert [h.lost.is_set() for h in cast(list[Any], held)] == [False, False]
    assert [kv.get(n) for n in names] == [None, None]
