"""Right host only, across two real VM hosts: a reservation enqueued on host A's queue whose computer
an administrator moves to host B (``computer.vmhostid``) while the task waits is refused by host A's
worker before libvirt (no domain on A's libvirtd, no overlay in A's datastore) and re-sent to
``vmhost.<hostB>``, where the worker running on host B loads it on host B's libvirtd."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.faults.conftest import COUNTERS
from worker.devkit.libvirt_env import list_domain_names
from worker.devkit.services import wait_until
from worker.devkit.stack import Stack
from worker.devkit.two_hosts import HostB
from worker.dispatcher import dispatch_once
from worker.hypervisors.host import get_host
from worker.hypervisors.lifecycle import remove_computer_domains

from .helpers import wait_success

pytestmark = [pytest.mark.hosts, pytest.mark.guest, pytest.mark.timeout(900)]

INDEX = 3  # host B's computer of this test (conftest: vms=5)


def _place(stack: Stack, computer_id: int, vmhost_id: int) -> None:
    """What an administrator's move writes: the computer's vmhostid."""
    stack.execute("UPDATE computer SET vmhostid = :v WHERE id = :c", v=vmhost_id, c=computer_id)


def test_moved_to_b_after_enqueue_on_a_is_refused_and_loaded_on_b(
    two_host_stack: Stack, host_b: HostB, tmp_path: Path
) -> None:
    stack = two_host_stack
    cid, short = host_b.computer_ids[INDEX], host_b.shorts[INDEX]
    host_b_uri = host_b.host.uri
    # No worker of host A may take the task before the move, nor one of host B before the refusal
    # is seen (an earlier test's may still run).
    for w in (*stack.workers, *host_b.workers):
        w.stop()
    try:
        _place(stack, cid, stack.site.vmhost_id)  # on host A when the dispatcher routes it
        req, res = host_b.new_reservation(INDEX)
        kv = redis.Redis.from_url(stack.settings.lock_redis_url)
        done = dispatch_once(
            stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=kv
        )
        sent = [d for d in done if d.reservation_id == res]
        assert [(d.action, str(d.queue)) for d in sent] == [("enqueued", stack.queue)], done
        task_id = str(sent[0].task_id)
        _place(stack, cid, host_b.vmhost_id)  # the move, while the task waits in A's queue

        worker_a = stack.start_worker(tmp_path, concurrency=1)
        wait_until(
            lambda: "not on this worker's host" in worker_a.tail(20000),
            120,
            "host A's worker refusing the task",
        )
        log_a = worker_a.tail(20000)
        worker_a.stop()
        COUNTERS["wrong-host deliveries refused"] += 1
        assert (
            f"computer {short} is on VM host {host_b.vmhost}, not on this worker's host {stack.vmhost}"
            in log_a
        )
        # Nothing made on host A: no domain in its libvirtd, no overlay in its datastore.
        assert list_domain_names(short) == []
        assert list(stack.datastore.glob(f"{short}_*")) == []
        assert stack.app.AsyncResult(task_id).state == "RETRY"
        assert stack.store.request_states(req) == ("pending", "new")  # still claimed by the task
        broker = redis.Redis.from_url(stack.settings.broker_url)
        assert broker.llen(host_b.queue) == 1  # re-sent to host B's queue

        # Host B's worker takes it from B's queue (the same task id) and loads it on host B.
        worker_b = host_b.start_worker(tmp_path)
        value = wait_success(stack, task_id, worker_b)
        assert value["status"] == "done" and value["vmhost"] == host_b.vmhost, value
        assert value["address"] == host_b.private_ip(INDEX), value
        assert host_b.domains(short + "_") == [value["domain"]]
        assert list_domain_names(short) == []  # still nothing on host A
        assert Path(value["disks"]["cow"]).parent == host_b.datastore
        assert stack.store.request_states(req) == ("reserved", "new")
    finally:
        _place(stack, cid, host_b.vmhost_id)
        # The guest and its files go (removed here: host B's datastore is not a path on host A).
        remove_computer_domains(get_host(host_b_uri), short, image_state=False)
        for p in host_b.host.on_host(host_b.datastore).glob(f"{short}_*"):
            p.unlink()
    assert host_b.domains(short + "_") == []
    assert not list(host_b.host.on_host(host_b.datastore).glob(f"{short}_*"))
