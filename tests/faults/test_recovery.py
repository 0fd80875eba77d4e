"""No request stays ``pending`` for good (issue 12), on the real stack: a prefork worker, MariaDB,
Redis, libvirtd. Each test injects one fault (counted in "faults injected"):

* the dispatcher SIGKILLed between its claim and ``send_task`` (failpoint ``dispatch.claimed``): the
  next pass's sweep re-enqueues the claim exactly once and the reservation loads;
* a load that ignores its soft time limit until the hard limit kills the child: Celery's failure
  handler fails the reservation (request failed/new, computer failed, loadlog failed + exited);
* retries exhausted on a computer lock that never frees: the same failure, never silence;
* a reservation that kills every worker child it reaches: failed after VCL_MAX_DELIVERIES;
* the dispatcher loop on a database that does not answer: the loop survives and dispatches once
  the database is back;
* the lock's Redis stopped while a task holds the lock: the release never raises, and the lock is
  gone one lease after Redis is back (not after the longest time limit).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from worker import dispatcher
from worker.db.engine import make_engine, make_session_factory
from worker.db.store import VclStore
from worker.devkit.commands import run_vcl_worker
from worker.devkit.services import PrivateRedis, free_port, wait_until
from worker.tasks.locks import computer_lock, computer_lock_name

from .conftest import (
    COUNTERS,
    FaultStack,
    check_loaded,
    loadlog,
    lock_kv,
    own_reservation,
    request_states,
    running_worker,
    send,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]


def _assert_failed(fs: FaultStack, res: int, index: int, expect: str) -> None:
    assert request_states(fs, res) == ("failed", "new"), request_states(fs, res)
    assert fs.store.computer_state(fs.site.computer_ids[index]) == "failed"
    names = loadlog(fs, res)
    assert "failed" in names and names[-1] == "exited", names
    info = " ".join(e.additionalinfo or "" for e in fs.store.loadlog(res))
    assert expect in info, info


def test_dispatcher_killed_between_claim_and_enqueue(fstack: FaultStack, own_node: int) -> None:
    index = 14
    _, res = own_reservation(fstack, own_node, index)
    env = {**fstack.env, "VCL_MANAGEMENT_NODE_ID": str(own_node), "VCL_FAILPOINT": "dispatch.claimed"}
    proc = run_vcl_worker(env, "dispatch", "--once", timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    COUNTERS["faults injected"] += 1
    assert request_states(fstack, res) == ("pending", "new")  # claimed, never enqueued
    with running_worker(fstack, concurrency=1) as worker:
        # Within the grace period the claim is left alone (its task may still be on its way).
        early = dispatcher.dispatch_once(
            fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack), sweep_grace=600
        )
        assert [d for d in early if d.action != "skipped"] == [], early
        time.sleep(2.2)  # the database clock counts whole seconds
        done = [
            d
            for d in dispatcher.dispatch_once(
                fstack.store,
                fstack.app,
                own_node,
                settings=fstack.settings,
                kv=lock_kv(fstack),
                sweep_grace=1,
            )
            if d.action != "skipped"  # other tests' reserved requests on the node
        ]
        assert [d.action for d in done] == ["requeue"], done
        result = fstack.app.AsyncResult(done[0].task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "done", f"{result!r}\n{worker.tail(4000)}"
        # Exactly once: later passes find nothing to do.
        again = dispatcher.dispatch_once(
            fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack), sweep_grace=1
        )
        assert [d for d in again if d.action != "skipped"] == [], again
    check_loaded(fstack, res, index)


def test_hard_time_limit_fails_the_reservation(fstack: FaultStack) -> None:
    index = 15
    res = fstack.new_reservation(index)
    marker = fstack.tmp / "fired-hard-limit"
    env = {
        "VCL_FAILPOINT": "load.started", "VCL_FAILPOINT_ACTION": "hang", "VCL_FAILPOINT_MARKER": str(marker),
        "VCL_QEMU_IMG_CONVERT_TIMEOUT": "2", "VCL_LOAD_SOFT_TIME_LIMIT": "3", "VCL_LOAD_TIME_LIMIT": "6",
    }  # fmt: skip
    with running_worker(fstack, concurrency=1, **env) as worker:
        result = send(fstack, "vcl.load", res)
        failure = result.get(timeout=120, propagate=False)
        log = worker.tail(20000)
    assert marker.exists(), log
    COUNTERS["faults injected"] += 1
    assert result.state == "FAILURE" and "TimeLimitExceeded" in repr(failure), (failure, log)
    _assert_failed(fstack, res, index, "TimeLimitExceeded")


def test_exhausted_retries_fail_the_reservation(fstack: FaultStack) -> None:
    index = 16
    res = fstack.new_reservation(index)
    cid = fstack.site.computer_ids[index]
    env = {"VCL_LOCK_WAIT": "1", "VCL_TASK_MAX_RETRIES": "2", "VCL_RETRY_BACKOFF_MAX": "1"}
    # Another task holds the computer for longer than all retries together.
    lock = computer_lock(lock_kv(fstack), cid, ttl=300, wait=5, owner="someone-else")
    with lock, running_worker(fstack, concurrency=1, **env) as worker:
        result = send(fstack, "vcl.load", res)
        failure = result.get(timeout=120, propagate=False)
        log = worker.tail(20000)
    COUNTERS["faults injected"] += 1
    assert result.state == "FAILURE" and "ComputerBusyError" in repr(failure), (failure, log)
    assert log.count("transient error") == 3, log  # the first attempt and two retries
    _assert_failed(fstack, res, index, "ComputerBusyError")


def test_a_reservation_that_kills_every_child_is_not_redelivered_forever(fstack: FaultStack) -> None:
    index = 17
    res = fstack.new_reservation(index)
    # No marker: the failpoint kills every delivery that reaches it.
    with running_worker(
        fstack, concurrency=1, VCL_FAILPOINT="load.claimed", VCL_MAX_DELIVERIES="2"
    ) as worker:
        result = send(fstack, "vcl.load", res)
        failure = result.get(timeout=180, propagate=False)
        log = worker.tail(30000)
    COUNTERS["faults injected"] += 1
    assert result.state == "FAILURE" and "delivered 3 times" in repr(failure), (failure, log)
    assert log.count("WorkerLostError") + log.count("Signal 9") >= 2, log
    _assert_failed(fstack, res, index, "delivered 3 times")
    assert fstack.domains(fstack.short(index)) == []


class _Outage:
    """The store a dispatcher sees: a database that does not answer (nothing listens on its port)
    for the first ``passes`` calls of dispatch_once, the stack's real one afterwards."""

    def __init__(self, fs: FaultStack, passes: int) -> None:
        self.dead = VclStore(
            make_session_factory(make_engine(f"mysql+pymysql://root@127.0.0.1:{free_port()}/vcl"))
        )
        self.live, self.left = fs.store, passes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dead if self.left > 0 else self.live, name)


def test_dispatcher_loop_survives_a_database_outage(
    fstack: FaultStack, own_node: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = 18
    _, res = own_reservation(fstack, own_node, index)
    store = _Outage(fstack, passes=2)
    monkeypatch.setattr(dispatcher, "DEFAULT_INTERVAL", 0)
    passes: list[list[dispatcher.Dispatched]] = []

    def on_pass(done: list[dispatcher.Dispatched]) -> None:
        passes.append(done)
        store.left -= 1

    COUNTERS["faults injected"] += 1
    with running_worker(fstack, concurrency=1):
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                dispatcher.run_forever(
                    store,  # type: ignore[arg-type]
                    fstack.app,
                    own_node,
                    settings=fstack.settings,
                    kv=lock_kv(fstack),
                    on_pass=on_pass,
                    should_stop=lambda: len(passes) >= 3,
                )
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)

        t = threading.Thread(target=loop)
        t.start()
        t.join(timeout=120)
        assert errors == [] and not t.is_alive(), errors
        assert passes[:2] == [[], []]  # the outage: failed passes, the loop went on
        enqueued = [d for d in passes[2] if d.action == "enqueued"]
        assert [d.reservation_id for d in enqueued] == [res], passes
        result = fstack.app.AsyncResult(enqueued[0].task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "done", result
    check_loaded(fstack, res, index)
    fstack.reset_computer(index)


def test_lock_release_survives_a_redis_error(fstack: FaultStack) -> None:
    rds = PrivateRedis(free_port(), fstack.tmp / "lock-redis")
    rds.start()
    try:
        client = redis.Redis.from_url(f"{rds.url}/0", socket_timeout=2, socket_connect_timeout=2)
        name = computer_lock_name(4242)
        with computer_lock(client, 4242, ttl=8100, wait=1, owner="task-1", lease=4):
            assert client.get(name) == b"task-1"
            time.sleep(1.5)  # the AOF fsyncs every second: the lock survives the restart below
            rds.stop()
            outcome = "the task's result"
        COUNTERS["faults injected"] += 1
        assert outcome == "the task's result"  # the release did not replace it with a Redis error
        rds.start()
        started = time.monotonic()
        wait_until(lambda: client.get(name) is None, 15, "the lock to expire with its lease")
        assert time.monotonic() - started < 15
    finally:
        rds.stop()
