"""Reclaim and "claim only what is ours" (issue 12) through the dispatcher on the real stack.

Injections (each counted in "faults injected"):
* a due ``new`` request on a computer of another provisioning module (VMware, OpenStack): the
  dispatcher skips it with the reason and never claims it;
* a loaded reservation ended by the user (``deleted``) or expired (``timeout``): reclaim.pm's
  result (old request complete, computer reload, a reload request by vclreload for the same
  revision), then the reload through the worker gives the computer a fresh disk and ``available``;
* a reservation deleted before it ever loaded (laststate ``new``): no reload, computer available.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from worker import dispatcher
from worker.db.reservation_row import LIBVIRT_PERL_PACKAGE
from worker.db.seed.data import LIBVIRT_PROVISIONING_ID

from .conftest import (
    COUNTERS,
    FaultStack,
    check_loaded,
    lock_kv,
    own_reservation,
    request_states,
    running_worker,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


def _pass(fs: FaultStack, node: int) -> list[dispatcher.Dispatched]:
    """One dispatcher pass on the test's own node; earlier tests' reserved requests (skipped) left out."""
    done = dispatcher.dispatch_once(fs.store, fs.app, node, settings=fs.settings, kv=lock_kv(fs))
    return [d for d in done if not (d.action == "skipped" and d.state == "reserved")]


def _wait(fs: FaultStack, done: list[dispatcher.Dispatched], worker: Any) -> None:
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == 1, done
    result = fs.app.AsyncResult(enqueued[0].task_id).get(timeout=240, propagate=False)
    assert isinstance(result, dict) and result["status"] == "done", f"{result!r}\n{worker.tail(4000)}"


@pytest.mark.parametrize(("provisioning_id", "module"), [(7, "vmware"), (11, "openstack")])
def test_dispatcher_claims_only_libvirt_computers(
    fstack: FaultStack, own_node: int, provisioning_id: int, module: str
) -> None:
    index = 19
    cid = fstack.site.computer_ids[index]
    fstack.execute("UPDATE computer SET provisioningid = :p WHERE id = :c", p=provisioning_id, c=cid)
    request_id, res = own_reservation(fstack, own_node, index)
    try:
        COUNTERS["faults injected"] += 1
        done = _pass(fstack, own_node)
        assert [(d.action, d.reservation_id) for d in done] == [("skipped", res)], done
        reason = done[0].reason
        assert f"provisioning::{module}" in reason.lower() and f"is not {LIBVIRT_PERL_PACKAGE}" in reason, (
            reason
        )
        assert request_states(fstack, res) == ("new", "new")  # never claimed
    finally:
        fstack.store.delete_request(request_id)
        fstack.execute(
            "UPDATE computer SET provisioningid = :p WHERE id = :c", p=LIBVIRT_PROVISIONING_ID, c=cid
        )


def _overlay(fs: FaultStack, index: int) -> tuple[str, float]:
    found = sorted(fs.datastore.glob(f"{fs.short(index)}_*"))
    assert len(found) == 1, found
    return found[0].name, os.stat(found[0]).st_mtime


@pytest.mark.parametrize(
    ("state", "laststate", "index"), [("deleted", "reserved", 20), ("timeout", "inuse", 21)]
)
def test_reclaim_reloads_the_computer_onto_a_fresh_disk(
    fstack: FaultStack, own_node: int, state: str, laststate: str, index: int
) -> None:
    cid = fstack.site.computer_ids[index]
    request_id, res = own_reservation(fstack, own_node, index)
    with running_worker(fstack, concurrency=1) as worker:
        _wait(fstack, _pass(fstack, own_node), worker)
        check_loaded(fstack, res, index)
        # Stamp the user's overlay: a reload that kept it would keep this mtime.
        os.utime(fstack.datastore / _overlay(fstack, index)[0], (1_000_000, 1_000_000))
        before = _overlay(fstack, index)
        (dom_before,) = fstack.domains(fstack.short(index))
        id_before = fstack.conn().lookupByName(dom_before).ID()
        # What the web (deleted) or vcld's inuse.pm (timeout) writes.
        fstack.execute(
            "UPDATE request SET stateid = (SELECT id FROM state WHERE name = :s),"
            " laststateid = (SELECT id FROM state WHERE name = :l) WHERE id = :r",
            s=state, l=laststate, r=request_id,
        )  # fmt: skip
        COUNTERS["faults injected"] += 1
        done = _pass(fstack, own_node)
        assert [(d.action, d.reason) for d in done] == [("reclaimed", "reload")], done
        assert request_states(fstack, res) == ("complete", state)
        assert fstack.store.computer_state(cid) == "reload"
        reload_row = fstack.one(
            "SELECT rq.id, rs.id AS res, s.name AS st, ls.name AS lst, u.unityid, rs.imagerevisionid"
            " FROM request rq JOIN reservation rs ON rs.requestid = rq.id JOIN state s ON s.id = rq.stateid"
            " JOIN state ls ON ls.id = rq.laststateid JOIN user u ON u.id = rq.userid"
            " WHERE rs.computerid = :c AND rq.id > :r ORDER BY rq.id DESC LIMIT 1",
            c=cid, r=request_id,
        )  # fmt: skip
        assert (reload_row.st, reload_row.lst, reload_row.unityid) == ("reload", laststate, "vclreload")
        assert reload_row.imagerevisionid == fstack.site.imagerevision_id  # the same revision
        # The next pass runs the reload like any reload request.
        _wait(fstack, _pass(fstack, own_node), worker)
    assert request_states(fstack, reload_row.res) == ("complete", "reload")
    assert fstack.store.computer_state(cid) == "available"
    after = _overlay(fstack, index)
    (dom_after,) = fstack.domains(fstack.short(index))
    assert after[0] == before[0] and after[1] > before[1], (before, after)  # a fresh overlay file
    assert fstack.conn().lookupByName(dom_after).ID() != id_before  # started afresh (libvirt ids only grow)
    # vcld's remove: the finished requests go away on the next pass.
    _pass(fstack, own_node)
    assert fstack.store.reservation_request(reload_row.res) is None
    if state == "deleted":  # complete/deleted is removable at once; complete/timeout once it ended
        assert fstack.store.reservation_request(res) is None
    fstack.reset_computer(index)


def test_reclaim_of_a_reservation_that_never_loaded_needs_no_reload(
    fstack: FaultStack, own_node: int
) -> None:
    index = 19
    cid = fstack.site.computer_ids[index]
    request_id, res = own_reservation(fstack, own_node, index, state="deleted", laststate="new")
    COUNTERS["faults injected"] += 1
    done = _pass(fstack, own_node)
    assert [(d.action, d.reason) for d in done] == [("reclaimed", "available")], done
    assert request_states(fstack, res) == ("complete", "deleted")
    assert fstack.store.computer_state(cid) == "available"
    newer = fstack.one(
        "SELECT COUNT(*) FROM reservation WHERE computerid = :c AND requestid > :r", c=cid, r=request_id
    )
    assert newer[0] == 0
