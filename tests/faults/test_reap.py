"""``vcl-worker reap [--apply] --vmhost``: lists, then removes, only orphan domains and overlays."""

from __future__ import annotations

import subprocess
import uuid

import libvirt
import pytest

from worker.devkit.commands import run_vcl_worker
from worker.devkit.images import sha256

from .conftest import FaultStack, check_loaded, make_fault_master, running_worker, send

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
INDEX = 13


def _reap(fs: FaultStack, *args: str) -> str:
    # reap --apply only runs on the host it names: the stack's VM host stands for this machine.
    env = {**fs.env, "VCL_HOST_ALIASES": fs.vmhost}
    proc = run_vcl_worker(env, "reap", "--vmhost", fs.vmhost, *args, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _domain(name: str, disk: str) -> None:
    c = libvirt.open("qemu:///system")
    try:
        c.defineXML(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
            f"<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
        )
    finally:
        c.close()


def test_reap_lists_then_removes_only_orphans(fstack: FaultStack) -> None:
    ds = fstack.datastore
    live_short = fstack.short(INDEX)
    res = fstack.new_reservation(INDEX)
    with running_worker(fstack, concurrency=1):
        assert send(fstack, "vcl.load", res).get(timeout=120)["status"] == "done"
    img = fstack.site.image_id
    # orphans: an old-revision overlay of the live computer; a domain + overlay of a computer in
    # maintenance; a domain + overlay of a deleted computer
    old = ds / f"{live_short}_{img}-v7.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(fstack.master), str(old)],
        check=True,
    )
    orphan_names = [str(old)]
    for index, state in ((2, "maintenance"), (3, "deleted")):
        short = fstack.short(index)
        cid = fstack.site.computer_ids[index]
        for d in fstack.domains(short):  # earlier tests' domains of these computers
            c = libvirt.open("qemu:///system")
            dom = c.lookupByName(d)
            dom.destroy()
            c.close()
        if state == "maintenance":
            fstack.execute(
                "UPDATE computer SET stateid=(SELECT id FROM state WHERE name='maintenance') WHERE id=:c",
                c=cid,
            )
        else:
            fstack.execute("UPDATE computer SET deleted=1 WHERE id=:c", c=cid)
        orphan_names += fstack.domains(short) + [str(p) for p in ds.glob(f"{short}_*.qcow2")]
    # never touched: a master named like an overlay-less file, an unknown computer's domain/overlay,
    # the live computer's domain and overlay, the real masters
    stranger = f"stranger{uuid.uuid4().hex[:4]}_{img}-v0"
    stranger_disk = ds / f"{stranger}.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(fstack.master),
            str(stranger_disk),
        ],
        check=True,
    )
    _domain(f"flt{fstack.run_id}x_{stranger}", str(stranger_disk))
    fake_master = ds / f"{live_short}_{img}-v9.qcow2"  # overlay-shaped name, but no backing file
    make_fault_master(fake_master)
    sums = {p: sha256(p) for p in fstack.master_sums} | {str(fake_master): sha256(fake_master)}
    try:
        listing = _reap(fstack)
        for name in orphan_names:
            assert "would remove" in listing and name in listing, (name, listing)
        assert stranger not in listing and str(fake_master) not in listing
        assert old.exists()  # dry run changed nothing
        applied = _reap(fstack, "--apply")
        for name in orphan_names:
            assert "removed" in applied and name in applied, (name, applied)
        assert not old.exists()
        for index in (2, 3):
            assert fstack.domains(fstack.short(index)) == []
            assert not list(ds.glob(f"{fstack.short(index)}_*"))
        assert stranger_disk.exists() and fake_master.exists()
        assert {p: sha256(p) for p in sums} == sums
        fake_master.chmod(0o644)
        fake_master.unlink()
        check_loaded(fstack, res, INDEX)  # the live reservation is untouched
        assert "0 orphan domain(s), 0 orphan overlay(s)" in _reap(fstack)
    finally:
        c = libvirt.open("qemu:///system")
        try:
            c.lookupByName(f"flt{fstack.run_id}x_{stranger}").undefine()
        finally:
            c.close()
        stranger_disk.unlink(missing_ok=True)
        fake_master.unlink(missing_ok=True)
