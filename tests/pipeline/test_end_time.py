"""A reservation ends at its end time where the dispatcher serves the node (issue 18), with the real
guest: the user's file is written inside the loaded guest; an extension (the web's
``XMLRPCextendRequest`` writes) keeps the reservation and the file; once ``request.end`` has passed
(the clock moved by SQL), the dispatcher times it out (``inuse.pm``), reclaims it and runs the reload:
the computer is ``available`` on a fresh disk, and the file is gone from the guest."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.devkit.web_writes import extend_request
from worker.dispatcher import dispatch_once

from .conftest import lock_kv
from .test_real_guest import dispatch_one, file_in_guest, load_for_user, private_ip, user_writes, wait_success

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def estack() -> Iterator[Stack]:
    with open_stack(StackConfig(tag="et", vms=1, guest=True), Stack) as s:
        yield s


@pytest.fixture(scope="module")
def eworker(estack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    with estack.running_worker(tmp_path_factory.mktemp("celery-end")) as w:
        yield w


def test_a_reservation_past_its_end_is_ended_and_reloaded(estack: Stack, eworker: CeleryWorker) -> None:
    index = 0
    estack.reset_computer(index)
    cid = estack.site.computer_ids[index]
    res, address = load_for_user(estack, eworker, index)
    found = estack.store.reservation_request(res)
    assert found is not None
    req = found[0]
    trace = user_writes(estack, address)

    # Past its end, then extended through the web: the dispatcher must leave it alone.
    estack.execute("UPDATE request SET end = NOW() - INTERVAL 1 MINUTE WHERE id = :r", r=req)
    extend_request(estack.sf, req, 60)
    kept = dispatch_once(estack.store, estack.app, estack.site.management_node_id, settings=estack.settings,
                         kv=lock_kv(estack))  # fmt: skip
    assert [d.action for d in kept if d.request_id == req] == ["skipped"], kept
    assert estack.store.request_states(req) == ("reserved", "new")
    assert file_in_guest(estack, address, trace.disk_path) == trace.content

    # The end passes: timeout and reclaim in one pass, the reload in the next.
    estack.execute("UPDATE request SET end = NOW() - INTERVAL 1 MINUTE WHERE id = :r", r=req)
    started = time.monotonic()
    ended = dispatch_once(estack.store, estack.app, estack.site.management_node_id, settings=estack.settings,
                          kv=lock_kv(estack))  # fmt: skip
    assert [(d.action, d.reason) for d in ended if d.request_id == req] == [
        ("ended", "timeout"), ("reclaimed", "reload"),
    ], ended  # fmt: skip
    assert estack.store.request_states(req) == ("complete", "timeout")
    assert estack.store.computer_state(cid) == "reload"
    log_ending = estack.one(
        "SELECT l.ending FROM log l JOIN request r ON r.logid = l.id WHERE r.id = :r", r=req
    )[0]
    assert log_ending == "EOR"
    _rid, task_id = dispatch_one(estack, "vcl.reload")
    value = wait_success(estack, task_id, eworker)
    seconds = time.monotonic() - started
    print(
        f"end passed -> available: {seconds:.1f} s (two dispatcher passes + the reload), {value['timings']}"
    )
    assert estack.store.computer_state(cid) == "available"
    assert value["address"] == private_ip(estack, index)
    for path in (trace.disk_path, trace.memory_path):
        assert file_in_guest(estack, address, path) is None, f"{path} survived the end of the reservation"
    # vcld's remove: complete/timeout past its end goes on the next pass.
    dispatch_once(estack.store, estack.app, estack.site.management_node_id, settings=estack.settings,
                  kv=lock_kv(estack))  # fmt: skip
    assert estack.store.reservation_request(res) is None
