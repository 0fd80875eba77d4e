"""The real host for tests, benchmarks and the demo: libvirt connections, isolated networks,
datastores under /var/lib/libvirt/images and domain cleanup.

Image helpers are re-exported here because the core tests reach every host helper through this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from worker.devkit.images import make_master, qemu_img_info, sha256, write_pattern

SYSTEM_URI = "qemu:///system"
# Under libvirt's own image directory: the qemu user can reach it and its SELinux/AppArmor labels fit.
IMAGES_ROOT = Path("/var/lib/libvirt/images")
TEST_ROOT = IMAGES_ROOT / "vcl-worker-tests"

__all__ = [
    "IMAGES_ROOT",
    "SYSTEM_URI",
    "TEST_ROOT",
    "cleanup_domains",
    "connect",
    "create_snapshot",
    "ensure_isolated_network",
    "list_domain_names",
    "make_datastore",
    "make_master",
    "qemu_img_info",
    "remove_datastore",
    "remove_network",
    "sha256",
    "snapshot_names",
    "system_available",
    "validate_domain_xml",
    "write_pattern",
]


def connect(uri: str = SYSTEM_URI, wait: float = 0) -> libvirt.virConnect:
    """Open ``uri``, retrying for up to ``wait`` s (other suites on a shared host restart libvirtd)."""
    # libvirt prints every error to stderr by default; callers see them as exceptions anyway.
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    deadline = time.monotonic() + wait
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)


def system_available(uri: str = SYSTEM_URI) -> bool:
    try:
        connect(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def make_datastore(name: str | None = None, root: Path = TEST_ROOT) -> Path:
    """A fresh directory under ``root``, 0755 whatever the umask: the qemu user must reach the disks."""
    path = root / (name or f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    for d in (root, path):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # noqa: S103 - read by libvirt-qemu, written only by root
    return path


def remove_datastore(path: Path) -> None:
    """Unmount what a test mounted below ``path``, make read-only masters writable, remove it all.

    Only directories under IMAGES_ROOT are touched, so a wrong argument cannot remove anything else.
    """
    resolved = path.resolve()
    if not path.exists() or resolved == IMAGES_ROOT or not resolved.is_relative_to(IMAGES_ROOT):
        return
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            mount_point = line.split()[1]
            if mount_point.startswith(str(path)):
                subprocess.run(["umount", "-l", mount_point], check=False)
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path, ignore_errors=True)


def ensure_isolated_network(name: str, uri: str = SYSTEM_URI, bridge: str | None = None) -> str:
    """Define and start the isolated (no <forward>) network ``name``; returns ``name``.

    The bridge defaults to ``vt<hash of name>``: Linux caps interface names at 15 characters.
    """
    conn = connect(uri)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            root = ET.Element("network")
            ET.SubElement(root, "name").text = name
            bridge = bridge or "vt" + hashlib.sha1(name.encode()).hexdigest()[:10]  # noqa: S324
            ET.SubElement(root, "bridge", name=bridge, stp="off")
            net = conn.networkDefineXML(ET.tostring(root, encoding="unicode"))
        if not net.isActive():
            net.create()
        return name
    finally:
        conn.close()


def remove_network(name: str, uri: str = SYSTEM_URI) -> None:
    conn = connect(uri)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if net.isActive():
                net.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            net.undefine()
    finally:
        conn.close()


def cleanup_domains(prefix: str, uri: str = SYSTEM_URI, wait: float = 0) -> list[str]:
    """Destroy and undefine every domain whose name starts with ``prefix``; returns their names."""
    conn = connect(uri, wait)
    removed = []
    try:
        for dom in conn.listAllDomains(0):
            if not dom.name().startswith(prefix):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
            removed.append(dom.name())
    finally:
        conn.close()
    return removed


def list_domain_names(
    prefix: str = "", uri: str = SYSTEM_URI, *, running_only: bool = False, wait: float = 0
) -> list[str]:
    conn = connect(uri, wait)
    try:
        return sorted(
            d.name()
            for d in conn.listAllDomains(0)
            if d.name().startswith(prefix)
            and (not running_only or d.state()[0] == libvirt.VIR_DOMAIN_RUNNING)
        )
    finally:
        conn.close()


def validate_domain_xml(xml: str, tmpdir: str | Path) -> None:
    """Run ``virt-xml-validate <file> domain``; raises AssertionError with its output on failure."""
    p = Path(tmpdir) / f"dom-{uuid.uuid4().hex[:8]}.xml"
    p.write_text(xml)
    proc = subprocess.run(["virt-xml-validate", str(p), "domain"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"virt-xml-validate failed: {proc.stdout}{proc.stderr}\n{xml}")


def create_snapshot(conn: libvirt.virConnect, domain_name: str, name: str, description: str = "") -> str:
    """Snapshot the domain ``domain_name`` of ``conn`` (any driver); returns the snapshot's name."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    snap = conn.lookupByName(domain_name).snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0)
    return str(snap.getName())


def snapshot_names(conn: libvirt.virConnect, domain_name: str) -> list[str]:
    """Names of every snapshot of the domain ``domain_name`` of ``conn``, in libvirt's order."""
    return [str(s.getName()) for s in conn.lookupByName(domain_name).listAllSnapshots(0)]
