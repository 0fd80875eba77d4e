"""Right host only (issue 18), on the real stack: a computer an administrator moves to another VM
host (``computer.vmhostid``) while its task waits in the old host's queue is refused by the old
host's worker, which creates no domain and re-sends the task to the new host's queue, where the new
host's worker loads it; a delegated call sent to the wrong host is answered by the right one."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from worker import dispatcher
from worker.app import vmhost_queue
from worker.devkit.commands import run_vcl_worker
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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

INDEX = 23


@pytest.fixture(scope="module")
def second_host(fstack: FaultStack) -> tuple[int, str]:
    """A second VM host of the site (its own computer row and vmhost row, the same vmprofile, as the
    web's "VM Hosts" page makes it): (vmhost id, short name)."""
    short = f"flthostb{fstack.run_id}"
    fstack.execute(
        "INSERT INTO computer (stateid, ownerid, platformid, vmhostid, currentimageid, nextimageid,"
        " imagerevisionid, RAM, procnumber, procspeed, network, hostname, IPaddress, privateIPaddress,"
        " type, provisioningid, drivetype, deleted)"
        " SELECT stateid, ownerid, platformid, NULL, currentimageid, nextimageid, imagerevisionid, RAM,"
        " procnumber, procspeed, network, :h, '192.168.122.2', '192.168.122.2', type, provisioningid,"
        " drivetype, 0 FROM computer WHERE id = :c",
        h=f"{short}.example.org", c=fstack.site.vmhost_computer_id,
    )  # fmt: skip
    fstack.execute(
        "INSERT INTO vmhost (computerid, vmprofileid) SELECT id, :p FROM computer WHERE hostname = :h",
        p=fstack.site.vmprofile_id, h=f"{short}.example.org",
    )  # fmt: skip
    return int(fstack.one("SELECT id FROM vmhost ORDER BY id DESC LIMIT 1")[0]), short


@pytest.fixture
def other_host(fstack: FaultStack, second_host: tuple[int, str]) -> Iterator[tuple[int, str]]:
    yield second_host
    # The computer goes back to the stack's host: its domain is live there, never an orphan.
    fstack.execute(
        "UPDATE computer SET vmhostid = :v WHERE id = :c",
        v=fstack.site.vmhost_id, c=fstack.site.computer_ids[INDEX],
    )  # fmt: skip


def _move(fs: FaultStack, vmhost_id: int) -> None:
    """What an administrator's move writes: the computer's vmhostid."""
    fs.execute("UPDATE computer SET vmhostid = :v WHERE id = :c", v=vmhost_id, c=fs.site.computer_ids[INDEX])


def test_a_computer_moved_after_enqueue_is_refused_and_rerouted(
    fstack: FaultStack, own_node: int, other_host: tuple[int, str]
) -> None:
    vmhost_id, short = other_host
    new_queue = vmhost_queue(short)
    broker = redis.Redis.from_url(fstack.settings.broker_url)
    fstack.reset_computer(INDEX)
    _, res = own_reservation(fstack, own_node, INDEX)
    sent = [
        d for d in dispatcher.dispatch_once(
            fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack)
        ) if d.reservation_id == res
    ]  # fmt: skip
    assert [(d.action, d.queue) for d in sent] == [("enqueued", fstack.queue)], sent
    task_id = sent[0].task_id
    _move(fstack, vmhost_id)  # while the task waits in the old host's queue
    with running_worker(fstack, concurrency=1) as old:
        wait_until(lambda: broker.llen(new_queue) == 1, 60, "the task on the new host's queue")
        log = old.tail(20000)
    COUNTERS["wrong-host deliveries refused"] += 1
    assert f"not on this worker's host {fstack.vmhost}" in log, log
    assert fstack.domains(fstack.short(INDEX)) == []  # nothing made on the old host
    assert list(fstack.datastore.glob(f"{fstack.short(INDEX)}_*")) == []
    assert fstack.app.AsyncResult(task_id).state == "RETRY"
    assert request_states(fstack, res) == ("pending", "new")  # still claimed by the task
    with running_worker(fstack, concurrency=1, queues=[new_queue]) as new:
        result = fstack.app.AsyncResult(task_id).get(timeout=180, propagate=False)
        log = new.tail(20000)
    assert isinstance(result, dict) and result["status"] == "done", (result, log)
    assert result["vmhost"] == short, result
    fstack.execute(  # back on the stack's host for the common checks (its reaper's view)
        "UPDATE computer SET vmhostid = :v WHERE id = :c",
        v=fstack.site.vmhost_id,
        c=fstack.site.computer_ids[INDEX],
    )
    check_loaded(fstack, res, INDEX)


def test_a_delegated_call_to_the_wrong_host_is_answered_by_the_right_one(
    fstack: FaultStack, other_host: tuple[int, str]
) -> None:
    vmhost_id, short = other_host
    res = fstack.new_reservation(INDEX)
    _move(fstack, vmhost_id)
    new_queue = vmhost_queue(short)
    with (
        running_worker(fstack, concurrency=1) as old,
        running_worker(fstack, concurrency=1, queues=[new_queue]) as new,
    ):
        proc = run_vcl_worker(
            fstack.env, "call", "power_status", str(res), "--queue", fstack.queue, "--wait", "--json",
            "--timeout", "60",
        )  # fmt: skip
        log = old.tail(20000)
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    COUNTERS["wrong-host deliveries refused"] += 1
    assert proc.returncode == 0 and reply["ok"] is True, (reply, proc.stderr)
    assert reply["worker"] == new.name, (reply, log)  # answered by the new host's worker
    assert f"not on this worker's host {fstack.vmhost}" in log, log
