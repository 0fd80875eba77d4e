"""vcld → bridge → worker, on the real thing: VCL's web XML-RPC makes the reservations, Apache VCL's
unchanged vcld processes them with ``VCL::Module::Provisioning::vcl_worker``, and two prefork
``celery worker`` processes (one per VM host queue) boot real guests.

The guest-side OS module is the runner's probe (``VCLD_OS=probe``): vcld's real Linux module needs a
guest with useradd, iptables, sshd configuration etc. that the busybox test guest does not have.
The tests run in file order and share one site (module fixture).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.vcld.site import FIRST_IMAGENAME, IMAGE_ID, BridgeSite
from tests.vcld.steps import READY_TIMEOUT, add, available, ready, shares, shell, wait_available, wait_ready
from worker.devkit.images import qemu_img_info

pytestmark = [pytest.mark.vcld, pytest.mark.slow]
SHARED: dict[str, Any] = {}
LIBVIRT_ROWS = {"startload", "transfervm", "vmsetupconfig", "startvm"}


def test_web_reservation_becomes_ready_through_the_bridge(bridge_site: BridgeSite) -> None:
    site = bridge_site
    request_id, t0 = add(site)
    site.wait(f"request {request_id} ready", lambda: ready(site, request_id), READY_TIMEOUT)
    elapsed = time.monotonic() - t0
    res = site.reservation(request_id)
    host = site.host_of_vm(res.computerid)
    SHARED["first"] = (request_id, res.id, res.computerid)
    # vcld's states (the worker writes none): request pending/reserved or reserved, computer reserved
    assert site.computer(res.computerid).state in ("reserved", "inuse")
    calls = site.calls(res.id)
    methods = [c["method"] for c in calls]
    assert {"initialize", "node_status", "does_image_exist", "load"} <= set(methods), methods
    assert all(c["ok"] for c in calls), calls
    assert {c["queue"] for c in calls} == {f"vmhost.{host.short}"}
    assert all(host.short in str(c["worker"]) for c in calls)
    rows = {r[0] for r in site.all(
        "SELECT s.loadstatename FROM computerloadlog l JOIN computerloadstate s ON s.id = l.loadstateid"
        " WHERE l.reservationid = :r", r=res.id)}  # fmt: skip
    assert rows >= LIBVIRT_ROWS, rows
    running = [n for n, st in site.domains(host.vm_short).items() if st == 1]
    assert running == [f"{host.vm_short}_ProbeKVMLinux_{IMAGE_ID}-v0"], running
    # The guest runs on an overlay of revision 0's master and answers with the site's key (the
    # worker runs no post-load of its own for vcld: currentimage.txt is the OS module's, here the probe).
    overlay = host.datastore / f"{host.vm_short}_{IMAGE_ID}-v0.qcow2"
    backing = qemu_img_info(overlay)["full-backing-filename"]
    assert backing == str(host.datastore / f"{FIRST_IMAGENAME}.qcow2"), backing
    with shell(site, host.vm_ip) as sh:
        sh.check(["true"])
    split = shares(site, res.id, elapsed)
    # vcld's estimate for the same load: the web sums computerloadstate.est over the VM load flow
    est = site.all(
        "SELECT s.loadstatename, s.est FROM computerloadflow f"
        " JOIN computerloadstate s ON s.id = f.computerloadstateid WHERE f.type = 'virtualmachine'"
    )
    site.timings["XMLRPCaddRequest -> ready (s)"] = split
    site.timings["VCL's estimate, sum of computerloadstate.est over the VM flow (s)"] = sum(
        int(r[1] or 0) for r in est
    )
    site.timings["  per state"] = {r[0]: r[1] for r in est}
    site.timings["calls for the first reservation"] = [
        (c["method"], c["timings"].get("total")) for c in calls
    ]


def test_end_makes_vcld_reclaim_and_reload_a_fresh_disk(bridge_site: BridgeSite) -> None:
    site = bridge_site
    request_id, reservation_id, vm_id = SHARED["first"]
    host = site.host_of_vm(vm_id)
    # the user connects (what the web's Connect button calls) -> reserved.pm -> inuse
    site.web.rpc("XMLRPCgetRequestConnectData", request_id, "127.0.0.1")
    site.wait("request inuse", lambda: (site.request_state(request_id) or ("",))[0] == "inuse", 300)
    with shell(site, host.vm_ip) as sh:
        sh.check(["touch", "/root/left-by-user"])
    t_end = time.time()
    assert site.web.rpc("XMLRPCendRequest", request_id).get("status") == "success"
    site.wait("computer reloaded and available", lambda: available(site, vm_id), READY_TIMEOUT, 2)
    reloads = [c for c in site.calls() if c["method"] == "load" and c["reservation_id"] != reservation_id
               and host.vm_short in c["detail"]]  # fmt: skip
    assert reloads and reloads[-1]["ok"], reloads
    assert reloads[-1]["queue"] == f"vmhost.{host.short}"
    # The reload rebuilt the disk (never vcld's READY shortcut, never a kept overlay): the proof is in
    # the guest below; inode numbers are no proof (the filesystem reuses a deleted file's number).
    assert "skipped" not in str(reloads[-1].get("detail", "")), reloads[-1]
    with shell(site, host.vm_ip) as sh:
        assert sh.run(["test", "-e", "/root/left-by-user"])[0] != 0, "previous user's file survived"
    site.timings["XMLRPCendRequest -> available after reload (s)"] = round(time.time() - t_end, 1)


def test_two_vm_hosts_each_reservation_on_its_own_queue(bridge_site: BridgeSite) -> None:
    site = bridge_site
    for h in site.hosts:
        wait_available(site, h.vm_id)
    (req_a, t0), (req_b, _) = add(site), add(site)
    for req in (req_a, req_b):
        wait_ready(site, req)
    site.timings["two reservations at once -> both ready (s)"] = round(time.monotonic() - t0, 1)
    res = [site.reservation(r) for r in (req_a, req_b)]
    assert {r.computerid for r in res} == {h.vm_id for h in site.hosts}
    for r in res:
        host = site.host_of_vm(r.computerid)
        calls = site.calls(r.id)
        # vcld loads, or skips the load when node_status says the computer is READY (a reclaim's
        # reload left it clean and answering): either way through this host's queue only.
        assert any(c["method"] == "load" for c in calls) or any(
            c["method"] == "node_status" and c["result"] == "READY" for c in calls
        ), calls
        assert {c["queue"] for c in calls} == {f"vmhost.{host.short}"}, calls
        assert all(host.short in str(c["worker"]) for c in calls), calls
    for req in (req_a, req_b):
        assert site.web.rpc("XMLRPCendRequest", req).get("status") == "success"
    for h in site.hosts:
        wait_available(site, h.vm_id)


def test_capture_through_the_web_completes_through_the_bridge(bridge_site: BridgeSite) -> None:
    site = bridge_site
    request_id, _ = add(site)
    site.wait(f"request {request_id} ready", lambda: ready(site, request_id), READY_TIMEOUT)
    res = site.reservation(request_id)
    host = site.host_of_vm(res.computerid)
    site.web.rpc("XMLRPCgetRequestConnectData", request_id, "127.0.0.1")
    site.wait("request inuse", lambda: (site.request_state(request_id) or ("",))[0] == "inuse", 300)
    t0 = time.time()
    site.web.ui_capture(request_id)  # "End Reservation & Create Image": new revision, request image
    new_rev = site.one("SELECT imagerevisionid FROM reservation WHERE id = :r", r=res.id)[0]

    def captured() -> Any:
        row = site.one("SELECT imagename, deleted FROM imagerevision WHERE id = :i", i=new_rev)
        return row if row is not None and row.deleted == 0 else None

    site.wait("new revision captured", captured, READY_TIMEOUT, 2)
    site.wait("reload of the new revision", lambda: available(site, res.computerid), READY_TIMEOUT, 2)
    site.timings["capture request -> captured, reloaded, available (s)"] = round(time.time() - t0, 1)
    imagename = captured().imagename
    master = host.datastore / f"{imagename}.qcow2"
    assert master.is_file(), sorted(p.name for p in host.datastore.iterdir())
    assert "backing-filename" not in qemu_img_info(master), "a captured master stands alone"
    calls = {c["method"]: c for c in site.calls(res.id)}
    assert calls["does_image_exist"]["result"] == 0 and calls["capture"]["result"] == 1
    assert int(calls["get_image_size"]["result"]) > 0
    assert site.computer(res.computerid).imagerevisionid == new_rev
    running = [n for n, st in site.domains(host.vm_short).items() if st == 1]
    assert len(running) == 1 and running[0].endswith(f"{IMAGE_ID}-v1"), running
