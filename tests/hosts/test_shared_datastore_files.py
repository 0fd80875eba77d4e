"""A datastore shared by two hosts (both vmprofiles' datastorepath and vmpath are one directory, as
with NFS): neither host removes the other's domains' files. Host A's computer has its overlay (backed
by a master in that directory), a dead revision's overlay and a boot snapshot there, with no domain
running on them (so no QEMU lock shields them); host B's computer has a domain on host B's libvirtd
over its overlay there. Then, on host B: ``vcl-worker reap --apply`` (run inside host B's namespaces,
as host B's worker would), maintenance's removal of the computer's domains, and capture's removal of
the captured domain each remove host B's files only."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from worker.devkit.commands import venv_command
from worker.devkit.images import make_master
from worker.devkit.stack import Stack
from worker.devkit.two_hosts import HostB
from worker.hypervisors.capture import remove_captured_domain
from worker.hypervisors.host import get_host
from worker.hypervisors.layout import Layout
from worker.hypervisors.lifecycle import remove_computer_domains

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(300)]

INDEX = 4  # host B's computer of this test (conftest: vms=5)
DOMAIN_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>
<driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>"""


def _current(stack: Stack, computer_id: int) -> tuple[int, int]:
    row = stack.one(
        "SELECT ir.imageid, ir.revision FROM computer c JOIN imagerevision ir ON ir.id = c.imagerevisionid"
        " WHERE c.id = :c",
        c=computer_id,
    )
    return int(row[0]), int(row[1])


def _overlay(path: Path, master: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(master), str(path)], check=True
    )
    return path


@pytest.fixture
def shared_profiles(two_host_stack: Stack, host_b: HostB, shared_datastore: Path) -> Iterator[Path]:
    """Both hosts' vmprofiles on the shared directory for the test; restored after it."""
    stack = two_host_stack
    ids = (stack.site.vmprofile_id, host_b.vmprofile_id)
    saved = [stack.one("SELECT datastorepath, vmpath FROM vmprofile WHERE id = :i", i=i) for i in ids]
    for i in ids:
        stack.execute(
            "UPDATE vmprofile SET datastorepath = :p, vmpath = :p WHERE id = :i", p=str(shared_datastore), i=i
        )
    try:
        yield shared_datastore
    finally:
        for i, (ds, vm) in zip(ids, saved, strict=True):
            stack.execute(
                "UPDATE vmprofile SET datastorepath = :d, vmpath = :v WHERE id = :i", d=ds, v=vm, i=i
            )


def test_neither_host_removes_the_others_files(
    two_host_stack: Stack, host_b: HostB, shared_profiles: Path
) -> None:
    stack, shared = two_host_stack, shared_profiles
    short_a, short_b = stack.short(0), host_b.shorts[INDEX]
    assert stack.one("SELECT vmhostid FROM computer WHERE id = :c", c=stack.site.computer_ids[0])[0] == (
        stack.site.vmhost_id
    )
    img_a, rev_a = _current(stack, stack.site.computer_ids[0])
    img_b, rev_b = _current(stack, host_b.computer_ids[INDEX])
    master = shared / f"linux-sharedfiles{uuid.uuid4().hex[:6]}-v0.qcow2"
    b_host = get_host(host_b.host.uri)
    try:
        make_master(master)
        # Host A's: a live overlay, a dead revision's overlay (A's reaper's to judge), a boot snapshot.
        a_files = [
            _overlay(shared / f"{short_a}_{img_a}-v{rev_a}.qcow2", master),
            _overlay(shared / f"{short_a}_{img_a}-v{rev_a + 1000}.qcow2", master),
            _overlay(shared / f"{short_a}_{img_a}-v{rev_a}.bootsnap.qcow2", master),
        ]
        for suffix in ("json", "mem"):
            path = shared / f"{short_a}_{img_a}-v{rev_a}.bootsnap.{suffix}"
            path.write_text("{}")
            a_files.append(path)
        # Host B's: its live domain over its overlay, and a dead revision's overlay (an orphan).
        b_live = _overlay(shared / f"{short_b}_{img_b}-v{rev_b}.qcow2", master)
        b_dead = _overlay(shared / f"{short_b}_{img_b}-v{rev_b + 1000}.qcow2", master)
        b_domain = f"{short_b}_{img_b}-v{rev_b}"
        b_host.define(DOMAIN_XML.format(name=b_domain, disk=b_live), autostart=False)

        # (a) The reaper of host B, run on host B with its settings.
        proc = subprocess.run(
            host_b.host.command([venv_command("vcl-worker"), "reap", "--vmhost", host_b.vmhost, "--apply"]),
            env={**host_b.env, "VCL_HOST_ALIASES": host_b.vmhost}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert f"removed overlay {b_dead} " in proc.stdout, proc.stdout  # it did reap host B's orphan
        assert [p for p in a_files if not p.exists()] == [], proc.stdout
        assert b_live.exists() and host_b.domains(b_domain) == [b_domain], proc.stdout

        # (b) Maintenance of host B's computer: its domains and their disks, nothing of host A's.
        assert remove_computer_domains(b_host, short_b, image_state=False, roots=stack.settings.roots) == [
            b_domain
        ]
        assert not b_live.exists() and host_b.domains(short_b + "_") == []
        assert [p for p in a_files if not p.exists()] == []

        # (c) Capture on host B: the captured domain and every disk of it, nothing of host A's.
        b_captured = _overlay(shared / f"{short_b}_{img_b}-v{rev_b}.qcow2", master)
        b_host.define(DOMAIN_XML.format(name=b_domain, disk=b_captured), autostart=False)
        layout = cast(Layout, SimpleNamespace(reservation=SimpleNamespace(request_state="image")))
        assert remove_captured_domain(b_host, layout, stack.settings, b_domain) is True
        assert not b_captured.exists() and host_b.domains(short_b + "_") == []
        assert [p for p in a_files if not p.exists()] == []
        assert master.exists()
    finally:
        remove_computer_domains(b_host, short_b, image_state=False, roots=stack.settings.roots)
        for p in (*shared.glob(f"{short_a}_*"), *shared.glob(f"{short_b}_*"), master):
            p.unlink(missing_ok=True)
    assert not list(shared.glob(f"{short_a}_*")) and not list(shared.glob(f"{short_b}_*"))
