"""A real load on host B: the dispatcher routes a reservation of a host-B computer to
``vmhost.<hostB>``, the worker running on host B boots the busybox guest on host B's libvirtd, the
guest answers SSH on host B's network (which the first host cannot reach), and the VCL rows are those
of any load."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.devkit.images import qemu_img_info
from worker.devkit.libvirt_env import list_domain_names
from worker.devkit.stack import Stack
from worker.devkit.two_hosts import HostB

from .helpers import LOAD_STAGES, banner_here, banner_on, dispatch_one, wait_success

pytestmark = [pytest.mark.hosts, pytest.mark.guest, pytest.mark.timeout(900)]


def test_load_boots_on_host_b_only(two_host_stack: Stack, host_b: HostB, tmp_path: Path) -> None:
    stack = two_host_stack
    worker = host_b.start_worker(tmp_path)
    req, res = host_b.new_reservation(0)
    _rid, task_id, queue = dispatch_one(stack, "vcl.load")
    assert queue == host_b.queue != stack.queue

    value = wait_success(stack, task_id, worker)

    address = host_b.private_ip(0)
    assert value["status"] == "done" and value["address"] == address, value
    assert str(value["banner"]).startswith("SSH-2.0-"), value
    assert stack.store.request_states(req) == ("reserved", "new")
    names = [e.loadstatename for e in stack.store.loadlog(res)]
    assert [n for n in names if n in LOAD_STAGES] == LOAD_STAGES
    # The domain is host B's, not host A's.
    assert host_b.domains(host_b.shorts[0] + "_") == [value["domain"]]
    assert value["domain"] not in list_domain_names(host_b.shorts[0])
    # Its overlay is in host B's datastore over host B's master.
    cow = Path(value["disks"]["cow"])
    assert cow.parent == host_b.datastore
    backing = Path(str(qemu_img_info(host_b.host.on_host(cow))["full-backing-filename"]))
    assert backing == host_b.datastore / f"{stack.site.imagename}.qcow2"
    # SSH answers on host B's network, and only there.
    assert banner_on(host_b.host, address).startswith("SSH-2.0-")
    assert not banner_here(address).startswith("SSH-")
    assert not Path(f"/sys/class/net/{host_b.network.bridge}").exists()
    assert host_b.host.run(["ip", "link", "show", host_b.network.bridge]).returncode == 0
