"""Real-host helpers for tests on qemu:///system: datastores, isolated networks, masters, cleanup."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import libvirt

TEST_ROOT = Path("/var/lib/libvirt/images/vcl-worker-tests")
SYSTEM_URI = "qemu:///system"


def _conn(uri: str = SYSTEM_URI) -> libvirt.virConnect:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return libvirt.open(uri)


def system_available(uri: str = SYSTEM_URI) -> bool:
    try:
        c = _conn(uri)
        c.close()
        return True
    except libvirt.libvirtError:
        return False


def make_datastore(name: str | None = None) -> Path:
    """A fresh directory (0755, reachable by libvirt-qemu) under TEST_ROOT."""
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)
    path = TEST_ROOT / (name or f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


def remove_datastore(path: Path) -> None:
    if path.exists() and str(path).startswith(str(TEST_ROOT)):
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path, ignore_errors=True)


def ensure_isolated_network(name: str, uri: str = SYSTEM_URI) -> str:
    """Define+start an isolated libvirt network ``name`` (bridge vt<hash>, <= 15 chars). Returns name."""
    conn = _conn(uri)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            bridge = "vt" + hashlib.sha1(name.encode()).hexdigest()[:10]
            xml = f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/></network>"
            net = conn.networkDefineXML(xml)
        if not net.isActive():
            net.create()
        return name
    finally:
        conn.close()


def remove_network(name: str, uri: str = SYSTEM_URI) -> None:
    conn = _conn(uri)
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            return
        if net.isActive():
            net.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            net.undefine()
    finally:
        conn.close()


def make_master(path: str | Path, size_mb: int = 64, pattern: int | None = None, mode: int = 0o644) -> Path:
    """A standalone qcow2 at ``path``; with ``pattern`` the first MiB is filled with that byte."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mb}M"], check=True)
    if pattern is not None:
        write_pattern(path, pattern)
    os.chmod(path, mode)
    return path


def write_pattern(path: str | Path, pattern: int, offset: int = 0, length: str = "1M") -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def qemu_img_info(path: str | Path) -> dict[str, object]:
    import json

    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout))


def cleanup_domains(prefix: str, uri: str = SYSTEM_URI) -> list[str]:
    """Destroy and undefine every domain whose name starts with ``prefix``."""
    conn = _conn(uri)
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


def list_domain_names(prefix: str = "", uri: str = SYSTEM_URI) -> list[str]:
    conn = _conn(uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))
    finally:
        conn.close()


def validate_domain_xml(xml: str, tmpdir: str | Path) -> None:
    """Run ``virt-xml-validate <file> domain``; raises AssertionError with its output on failure."""
    p = Path(tmpdir) / f"dom-{uuid.uuid4().hex[:8]}.xml"
    p.write_text(xml)
    proc = subprocess.run(["virt-xml-validate", str(p), "domain"], capture_output=True, text=True)
    assert proc.returncode == 0, f"virt-xml-validate failed: {proc.stdout}{proc.stderr}\n{xml}"
