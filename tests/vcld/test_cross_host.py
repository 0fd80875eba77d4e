"""Capture on host A → load on host B, through VCL's real web and vcld (issue 20).

The site (``cross_host_site``): host A is this machine's libvirtd, host B a real second VM host (its
own libvirtd, mount and network namespaces, datastore and DHCP network; its worker runs inside it), a
repository directory both see at the same path (every vmprofile's ``repositorypath``). The first
master is in A's datastore and the repository only. Host B's VM is recorded with more RAM, so VCL's
web (``isAvailable``: the smallest computer that fits first) gives the first reservation host A's VM.

Flow, every reservation through the web's own calls: a reservation → ready on host A, the user's file
written into the guest, "End Reservation & Create Image" → vcld's image.pm captures on host A through
the bridge (new master in A's datastore and the repository) and reloads A's VM with the new revision;
the owner makes the new revision production (Manage Images, "In Production"); then two reservations
of it at once, one on each VM, whichever order the web allocates them in (it gives the first one host
B's VM: ``isAvailable`` drops, as a "possible recent failure", the computer of the user's own
reservation of the same image that started less than 90 minutes ago and has ended, here A's VM); on
B's VM host B copies the master from the repository into its own datastore and boots it;
the user's file is in the guest on B (reached from inside B's namespace). Ending B's reservation after
the user connected makes vcld reload B's VM: from B's copy, never copied again.

The OS module is the runner's probe (vcld never logs into the guests here; :mod:`test_debian` runs
VCL's real Linux module).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.hosts.helpers import ssh_on
from tests.vcld.runners import PASSWORD, USER
from tests.vcld.site import IMAGE_ID, BridgeSite, Host
from tests.vcld.steps import (
    READY_TIMEOUT,
    add,
    available,
    request_in,
    shares,
    shell,
    wait_available,
    wait_ready,
)
from tests.vcld.web_ui import make_production
from worker.devkit.images import qemu_img_info

pytestmark = [pytest.mark.vcld, pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(3000)]


def _on_queue_of(site: BridgeSite, reservation_id: int, host: Host) -> list[dict[str, Any]]:
    """Every vcl.call of the reservation, all answered by ``host``'s worker from its own queue."""
    calls = site.calls(reservation_id)
    assert calls, f"no vcl.call for reservation {reservation_id}"
    assert {c["queue"] for c in calls} == {f"vmhost.{host.short}"}, calls
    assert all(host.short in str(c["worker"]) for c in calls), calls
    assert all(c["ok"] for c in calls), calls
    return calls


def _files(directory: Path, name: str) -> list[Path]:
    """``<name>.*`` anywhere below ``directory`` (a repository keeps a revision in a subdirectory)."""
    return sorted(p for p in directory.rglob(f"{name}.*") if p.is_file())


def _allocation_state(site: BridgeSite) -> dict[str, Any]:
    """What VCL's web allocates from (isAvailable): computers, requests, semaphores."""
    return {
        "computers": site.all(
            "SELECT c.id, s.name, c.currentimageid, c.imagerevisionid, c.RAM FROM computer c"
            " JOIN state s ON s.id = c.stateid WHERE c.type = 'virtualmachine' AND c.deleted = 0"
        ),
        "requests": site.all(
            "SELECT r.id, s.name, l.name, r.start, r.end, v.computerid, v.imagerevisionid FROM request r"
            " JOIN state s ON s.id = r.stateid JOIN state l ON l.id = r.laststateid"
            " JOIN reservation v ON v.requestid = r.id"
        ),
        "semaphores": site.all("SELECT * FROM semaphore"),
        "production": site.all("SELECT id, production FROM imagerevision WHERE imageid = :i", i=IMAGE_ID),
    }


def _connect(site: BridgeSite, request_id: int) -> None:
    """The web's Connect button, then vcld's reserved.pm sees the user connected: inuse."""
    site.web.rpc("XMLRPCgetRequestConnectData", request_id, "127.0.0.1")
    site.wait(f"request {request_id} inuse", lambda: request_in(site, request_id, "inuse"), 300)


def test_capture_on_a_then_reservations_of_the_new_revision_load_on_b(cross_host_site: BridgeSite) -> None:
    site = cross_host_site
    a, b = site.hosts
    assert a.machine is None and b.machine is not None and site.repository is not None
    repository = site.repository
    # Host B cannot even name host A's datastore; the repository is the same path on both.
    assert b.machine.run(["test", "-e", str(a.datastore)]).returncode != 0
    assert b.machine.run(["test", "-d", str(repository)]).returncode == 0

    # 1. A user's reservation: the web gives it host A's VM; the user leaves a file in the guest.
    first, t0 = add(site)
    wait_ready(site, first)
    site.timings["cross-host: XMLRPCaddRequest -> ready on host A (s)"] = round(time.monotonic() - t0, 1)
    res = site.reservation(first)
    assert res.computerid == a.vm_id, (res, a)
    _on_queue_of(site, res.id, a)
    _connect(site, first)
    content = uuid.uuid4().hex
    with shell(site, a.vm_ip) as sh:
        sh.check(["tee", "/root/from-host-a"], stdin=content + "\n")
        sh.check(["sync"])

    # 2. "End Reservation & Create Image": vcld captures on host A through the bridge; image.pm then
    #    reloads A's VM with the new revision.
    t_capture = time.monotonic()
    site.web.ui_capture(first)
    new_rev = site.one("SELECT imagerevisionid FROM reservation WHERE id = :r", r=res.id)[0]

    def captured() -> Any:
        row = site.one("SELECT imagename, deleted FROM imagerevision WHERE id = :i", i=new_rev)
        return row if row is not None and row.deleted == 0 else None

    new_name = str(site.wait("new revision captured", captured, READY_TIMEOUT, 2).imagename)
    wait_available(site, a.vm_id)
    site.timings["cross-host: capture on A -> captured, reloaded, available (s)"] = round(
        time.monotonic() - t_capture, 1
    )
    calls = {c["method"]: c for c in _on_queue_of(site, res.id, a)}
    assert calls["capture"]["result"] == 1, calls["capture"]
    assert (a.datastore / f"{new_name}.qcow2").is_file()
    in_repo = _files(repository, new_name)
    assert [p for p in in_repo if p.suffix == ".qcow2"], (new_name, sorted(repository.rglob("*")))
    assert "backing-filename" not in qemu_img_info(next(p for p in in_repo if p.suffix == ".qcow2"))
    b_master = b.here(b.datastore / f"{new_name}.qcow2")
    assert not b_master.exists(), "host B has the new revision before any reservation of it there"
    assert site.computer(a.vm_id).imagerevisionid == new_rev

    # 3. The owner makes the new revision production (the web's own page), so new reservations use it.
    make_production(site.web.base, USER, PASSWORD, IMAGE_ID, new_rev)

    # 4. Two reservations of the new revision at once: one on each VM, whichever the web allocates
    #    first (B's: A's VM is a "possible recent failure" for this user and image, see above).
    before = _allocation_state(site)
    try:
        first_two = [add(site), add(site)]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbefore: {before}\nnow: {_allocation_state(site)}") from exc
    placed = {site.reservation(req).computerid: (req, t) for req, t in first_two}
    assert set(placed) == {a.vm_id, b.vm_id}, (placed, before, _allocation_state(site))
    (holder, _), (on_b, t_b) = placed[a.vm_id], placed[b.vm_id]
    res_b = site.reservation(on_b)
    assert res_b.imagerevisionid == new_rev == site.reservation(holder).imagerevisionid, res_b
    site.timings["cross-host: the web's allocation order"] = [
        "A" if site.reservation(req).computerid == a.vm_id else "B" for req, _ in first_two
    ]
    for req in (holder, on_b):
        wait_ready(site, req)
    split = shares(site, res_b.id, time.monotonic() - t_b)
    site.timings["cross-host: XMLRPCaddRequest -> ready on host B, master copied first (s)"] = split
    calls_b = _on_queue_of(site, res_b.id, b)
    (load_b,) = [c for c in calls_b if c["method"] == "load"]
    # The delegated answer says the master was copied; B's datastore is the proof below (absent before
    # this load, there after it, the same file after the reload).
    assert load_b["master_copied"] is True, load_b
    site.timings["cross-host: host B's load (copy from the repository, boot) (s)"] = load_b["timings"][
        "total"
    ]
    exists = [c for c in calls_b if c["method"] == "does_image_exist"]
    assert exists and exists[0]["result"] == 1, calls_b  # in the repository: host B can retrieve it

    # Host B copied the master into its own datastore, boots the domain on its own libvirtd from it.
    assert b_master.is_file(), sorted(p.name for p in b.here(b.datastore).iterdir())
    assert "backing-filename" not in qemu_img_info(b_master)
    copied = b_master.stat()
    overlays = [p for p in b.here(b.datastore).iterdir() if p.name.startswith(f"{b.vm_short}_")]
    assert overlays, sorted(p.name for p in b.here(b.datastore).iterdir())
    backing = {str(qemu_img_info(p).get("full-backing-filename")) for p in overlays if p.suffix == ".qcow2"}
    assert backing == {str(b.datastore / f"{new_name}.qcow2")}, backing
    running = [n for n, st in site.domains(b.vm_short).items() if st == 1]
    assert len(running) == 1 and running[0].endswith(f"{IMAGE_ID}-v1"), running
    assert not [n for n in site.domains(b.vm_short) if n in site.domains(a.vm_short)]
    # The user's file from host A's guest is in the guest on host B (reached from inside host B).
    assert ssh_on(b.machine, str(site.private_key), b.vm_ip, "cat /root/from-host-a").strip() == content

    # 5. The user connects on B and ends; vcld reclaims B's VM and reloads it: from B's own copy.
    _connect(site, on_b)
    t_end = time.monotonic()
    for req in (holder, on_b):
        assert site.web.rpc("XMLRPCendRequest", req).get("status") == "success"
    for host in (a, b):
        wait_available(site, host.vm_id)
    site.timings["cross-host: XMLRPCendRequest -> B reloaded from its copy, available (s)"] = round(
        time.monotonic() - t_end, 1
    )
    loads = [c for c in site.calls() if c["method"] == "load" and b.vm_short in c["detail"]]
    reloads = [c for c in loads if c["reservation_id"] not in (res.id, res_b.id)]
    assert reloads and reloads[-1]["ok"] and reloads[-1]["queue"] == f"vmhost.{b.short}", reloads
    assert reloads[-1]["master_copied"] is False, reloads[-1]
    again = b_master.stat()
    assert (again.st_ino, again.st_mtime_ns) == (copied.st_ino, copied.st_mtime_ns), "copied twice"
    assert ssh_on(b.machine, str(site.private_key), b.vm_ip, "cat /root/from-host-a").strip() == content
    assert available(site, b.vm_id)
