"""Delegated calls cannot act late (issue 18), on the real stack: a prefork worker, MariaDB, Redis,
libvirtd, and ``vcl-worker call`` as vcld's module runs it.

* a ``power_off`` whose deadline passes while it waits for the computer's lock (held by the test,
  as by another task) answers ``expired``; a ``power_on`` queued behind it is revoked by the CLI when
  it gives up and never runs; nothing is retried, and the running domain is untouched;
* a call that reaches the worker after its deadline answers ``expired`` and changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import libvirt
import pytest

from worker.devkit.commands import run_vcl_worker
from worker.devkit.services import wait_until
from worker.tasks.locks import computer_lock

from .conftest import COUNTERS, FaultStack, lock_kv, running_worker, send

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

INDEX = 22


def _running_domain(fs: FaultStack) -> tuple[str, int]:
    """(name, libvirt id) of the computer's one running domain."""
    doms = fs.domains(fs.short(INDEX))
    assert len(doms) == 1, doms
    conn = fs.conn()
    try:
        dom = conn.lookupByName(doms[0])
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        return doms[0], int(dom.ID())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def loaded(fstack: FaultStack) -> int:
    """A reservation of computer INDEX whose domain runs."""
    fstack.reset_computer(INDEX)
    res = fstack.new_reservation(INDEX)
    with running_worker(fstack, concurrency=1):
        result = send(fstack, "vcl.load", res).get(timeout=180, propagate=False)
    assert isinstance(result, dict) and result["status"] == "done", result
    return res


def _cli_call(fs: FaultStack, method: str, res: int, timeout: int) -> dict[str, Any]:
    proc = run_vcl_worker(fs.env, "call", method, str(res), "--wait", "--json", "--timeout", str(timeout))
    reply: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and reply["ok"] is False, (proc.stdout, proc.stderr)
    return reply


def test_a_call_whose_deadline_passes_waiting_for_the_lock_is_refused(
    fstack: FaultStack, loaded: int
) -> None:
    before = _running_domain(fstack)
    cid = fstack.site.computer_ids[INDEX]
    replies: dict[str, dict[str, Any]] = {}
    with (
        running_worker(fstack, concurrency=1) as worker,
        computer_lock(lock_kv(fstack), cid, ttl=120, wait=5, owner="another-task"),
    ):
        # A: power_off waits for the computer another task holds, longer than vcld waits (8 s).
        first = threading.Thread(target=lambda: replies.update(a=_cli_call(fstack, "power_off", loaded, 8)))
        first.start()
        time.sleep(2)
        # B: queued behind A on the host's one child; vcld gives up after 3 s and the CLI revokes it.
        replies["b"] = _cli_call(fstack, "power_on", loaded, 3)
        first.join(timeout=60)
        a, b = replies["a"], replies["b"]
        assert "no result within 3 s" in b["error"] and b["revoked"] is True, b
        # A's answer: "expired" (from the worker, or the CLI gave up first and revoked it).
        assert a["error"].startswith("expired") or a["revoked"] is True, a
        answer = fstack.app.AsyncResult(a["task_id"]).get(timeout=60, propagate=False)
        assert isinstance(answer, dict), answer
        assert answer["ok"] is False and answer["error"].startswith("expired"), answer
        assert answer["result"] == 0
        # B never ran: the worker discarded it (revoked and expired) once the child was free.
        wait_until(lambda: fstack.app.AsyncResult(b["task_id"]).state == "REVOKED", 30, "B to be discarded")
        log = worker.tail(30000)
    COUNTERS["late calls refused"] += 2
    # Not retried: one delivery each, no retry scheduled, no second attempt.
    assert log.count(f"vcl.call[{a['task_id']}] received") == 1, log
    assert "Retry in" not in log and " retry: " not in log, log
    assert f"vcl.call[{b['task_id']}] succeeded" not in log, log
    # The domain vcld asked about was not touched: the same one still runs (not restarted either).
    assert _running_domain(fstack) == before


def test_a_call_that_arrives_after_its_deadline_changes_nothing(fstack: FaultStack, loaded: int) -> None:
    before = _running_domain(fstack)
    late = fstack.app.send_task(
        "vcl.call", args=["unload", loaded, []], kwargs={"deadline": time.time() - 1}, queue=fstack.queue
    )
    with running_worker(fstack, concurrency=1):
        answer = late.get(timeout=60, propagate=False)
    assert isinstance(answer, dict) and answer["ok"] is False, answer
    assert answer["error"].startswith("expired") and answer["detail"] == "expired", answer
    COUNTERS["late calls refused"] += 1
    assert _running_domain(fstack) == before
    assert len(list(fstack.datastore.glob(f"{fstack.short(INDEX)}_*"))) == 1  # its overlay kept
