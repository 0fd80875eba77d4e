"""The sweep judges a claim whose task is running on a worker that is gone (issue 18), on the real
stack: a load stands STARTED on a prefork worker, the whole worker (main process and children) is
SIGKILLed, so the task's message waits unacknowledged for the broker's visibility timeout (hours).
While the worker lives the sweep leaves the claim alone; once it answers no more, the next pass
re-enqueues the claim exactly once and a new worker loads the reservation."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from worker import dispatcher
from worker.devkit.services import wait_until

from .conftest import (
    COUNTERS,
    FaultStack,
    check_loaded,
    lock_kv,
    own_reservation,
    request_states,
    running_worker,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]

INDEX = 29


def _pass(fs: FaultStack, node: int, res: int) -> list[dispatcher.Dispatched]:
    done = dispatcher.dispatch_once(
        fs.store, fs.app, node, settings=fs.settings, kv=lock_kv(fs), sweep_grace=1
    )
    # Skips (the reservation once reserved, other tests' requests) are not what the sweep did.
    return [d for d in done if d.reservation_id == res and d.action != "skipped"]


def _kill_whole_worker(pid: int) -> None:
    """SIGKILL the worker's main process and every child: the host lost, not just a child."""
    main = psutil.Process(pid)
    procs = [main, *main.children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def test_a_started_claim_whose_worker_is_gone_is_requeued_once(fstack: FaultStack, own_node: int) -> None:
    fstack.reset_computer(INDEX)
    _, res = own_reservation(fstack, own_node, INDEX)
    marker = fstack.tmp / "paused-dead-worker"
    env = {
        "VCL_FAILPOINT": "load.started", "VCL_FAILPOINT_ACTION": "pause", "VCL_FAILPOINT_MARKER": str(marker),
        "VCL_LOCK_LEASE": "6",  # the dead child's computer lock ends within seconds
    }  # fmt: skip
    sent = _pass(fstack, own_node, res)
    assert [d.action for d in sent] == ["enqueued"], sent
    first = sent[0].task_id
    with running_worker(fstack, concurrency=1, **env) as worker:
        wait_until(
            lambda: marker.exists() and marker.read_text().strip(), 120, "the load to stand at load.started"
        )
        assert fstack.app.AsyncResult(first).state in ("STARTED", "PROGRESS")
        time.sleep(2.2)  # the database clock counts whole seconds: the claim is older than the grace
        assert _pass(fstack, own_node, res) == []  # its worker still holds it: left alone
        _kill_whole_worker(worker.proc.pid)
        COUNTERS["faults injected"] += 1
    assert fstack.app.AsyncResult(first).state in ("STARTED", "PROGRESS")  # nobody will ever finish it
    done = _pass(fstack, own_node, res)
    assert [d.action for d in done] == ["requeue"], done
    assert "worker gone" in done[0].reason and done[0].task_id != first, done
    with running_worker(fstack, concurrency=1):
        result = fstack.app.AsyncResult(done[0].task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "done", result
        assert _pass(fstack, own_node, res) == []  # exactly once
    assert request_states(fstack, res) == ("reserved", "new")
    check_loaded(fstack, res, INDEX)
