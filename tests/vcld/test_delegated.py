"""Delegated mode in-process on the real stack (MariaDB from vcl.sql, libvirtd, qemu-img, Redis):
every method returns what vcld expects and writes no request/computer state; the dispatcher refuses
a management node that vcld serves through the bridge; ``vcl-worker call`` answers in JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from tests.vcld.runners import REGISTER_SQL, sql
from worker.delegated.guard import VcldServesManagementNodeError, refuse_if_vcld_serves
from worker.delegated.operations import LIBVIRT_LOAD_ROWS, run_call
from worker.devkit.commands import run_vcl_worker
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.tasks.deps import TaskDeps

pytestmark = pytest.mark.vcld


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Redis DB 10 (this suite's; the vcld site of test_bridge.py, module-scoped, is gone by now).
    # Blank masters, no guest OS.
    with open_stack(StackConfig(tag="dlg", vms=1, redis_dbs=(10, 10, 10)), Stack) as s:
        yield s


def _call(stack: Stack, method: str, reservation_id: int, *args: str) -> dict[str, Any]:
    settings = replace(stack.settings, wait_for_guest=False)
    deps = TaskDeps(
        store=stack.store, settings=settings, kv=redis.Redis.from_url(stack.settings.lock_redis_url)
    )
    return run_call(method, reservation_id, args, deps=deps).as_dict()


def _states(stack: Stack, request_id: int) -> tuple[Any, ...]:
    row = stack.one(
        "SELECT s.name, l.name, cs.name, c.currentimageid, c.vmhostid FROM request r"
        " JOIN state s ON s.id = r.stateid JOIN state l ON l.id = r.laststateid"
        " JOIN reservation v ON v.requestid = r.id JOIN computer c ON c.id = v.computerid"
        " JOIN state cs ON cs.id = c.stateid WHERE r.id = :r",
        r=request_id,
    )
    return tuple(row)


def test_load_power_and_unload_write_no_state(stack: Stack) -> None:
    request_id, reservation_id = stack.new_request()
    before = _states(stack, request_id)
    assert _call(stack, "initialize", reservation_id)["result"] == 1
    assert _call(stack, "node_status", reservation_id)["result"] == "RELOAD"
    assert _call(stack, "does_image_exist", reservation_id)["result"] == 1
    assert _call(stack, "does_image_exist", reservation_id, "no-such-image-v0")["result"] == 0
    loaded = _call(stack, "load", reservation_id)
    assert loaded["ok"] and loaded["result"] == 1, loaded
    # READY is what this should be; the core's node_status reads the running guest's overlay with
    # qemu-img info without -U (lifecycle.py), gets the image lock refused and says RELOAD.
    assert _call(stack, "node_status", reservation_id)["result"] in ("READY", "RELOAD")
    assert _call(stack, "power_status", reservation_id)["result"] == "on"
    assert _call(stack, "power_off", reservation_id)["result"] == 1
    assert _call(stack, "power_status", reservation_id)["result"] == "off"
    assert _call(stack, "power_reset", reservation_id)["result"] == 1
    assert _call(stack, "power_status", reservation_id)["result"] == "on"
    assert _call(stack, "get_image_size", reservation_id)["result"] > 0
    rows = [e.loadstatename for e in stack.store.loadlog(reservation_id)]
    assert rows == list(LIBVIRT_LOAD_ROWS), rows  # exactly libvirt.pm's rows, nothing of new.pm's
    assert _call(stack, "unload", reservation_id)["result"] == 1
    assert stack.domains(stack.short(0)) == []
    # With the domain gone there is no power state: ok, result None (timings differ call to call).
    gone = _call(stack, "power_status", reservation_id)
    assert (gone["ok"], gone["result"]) == (True, None), gone
    assert _states(stack, request_id) == before  # vcld's states untouched


def test_capture_renames_the_image_and_nothing_else(stack: Stack) -> None:
    _, reservation_id = stack.new_request()
    assert _call(stack, "load", reservation_id)["result"] == 1
    request_id, cap_reservation, rev_id = stack.capture_request()
    before = _states(stack, request_id)
    assert _call(stack, "does_image_exist", cap_reservation)["result"] == 0  # image.pm needs 0
    captured = _call(stack, "capture", cap_reservation)
    assert captured["ok"] and captured["result"] == 1, captured
    name = stack.one("SELECT imagename FROM imagerevision WHERE id = :i", i=rev_id)[0]
    assert (stack.datastore / f"{name}.qcow2").is_file()
    assert stack.one("SELECT name FROM image WHERE id = :i", i=stack.site.image_id)[0] == name
    assert _call(stack, "get_image_size", cap_reservation, "old-name-v9")["result"] > 0
    assert _states(stack, request_id) == before


def test_post_maintenance_action_detaches_the_computer(stack: Stack) -> None:
    request_id, reservation_id = stack.maintenance_request()
    state, laststate, cstate, _, vmhost = _states(stack, request_id)
    assert vmhost is not None
    assert _call(stack, "post_maintenance_action", reservation_id)["result"] == 1
    after = _states(stack, request_id)
    assert after[:3] == (state, laststate, cstate) and after[4] is None
    assert stack.one("SELECT imagename FROM imagerevision WHERE imageid = :i", i=after[3])[0] == "noimage"


def test_dispatcher_refuses_a_management_node_vcld_serves(stack: Stack) -> None:
    mn = stack.site.management_node_id
    refuse_if_vcld_serves(stack.store, mn)  # libvirt computers only: the dispatcher may run
    db = stack.db_url.rsplit("/", 1)[1]
    sql(db, REGISTER_SQL.read_text())
    stack.execute(
        "UPDATE computer SET provisioningid = (SELECT id FROM provisioning WHERE name = 'vcl_worker')"
        " WHERE id = :c",
        c=stack.site.computer_ids[0],
    )
    try:
        with pytest.raises(VcldServesManagementNodeError, match="served by vcld"):
            refuse_if_vcld_serves(stack.store, mn)
        proc = run_vcl_worker({**stack.env, "VCL_MANAGEMENT_NODE_ID": str(mn)}, "dispatch", "--once")
        assert proc.returncode == 1 and "served by vcld" in proc.stderr, proc
    finally:
        stack.execute("UPDATE computer SET provisioningid = 9 WHERE id = :c", c=stack.site.computer_ids[0])


def test_cli_call_answers_one_json_object_on_failure(stack: Stack) -> None:
    proc = run_vcl_worker(stack.env, "call", "power_status", "999999", "--wait", "--json", timeout=120)
    assert proc.returncode == 1
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["ok"] is False and "not found" in reply["error"]
