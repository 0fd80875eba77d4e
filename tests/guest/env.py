"""Throwaway libvirt objects for the real-guest tests: an isolated DHCP network, guest domains.

Everything is named with a per-run unique prefix and removed by the fixtures, even on failure.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from worker.devkit.guest_network import DhcpNetwork, create_dhcp_network
from worker.devkit.guest_network import remove_network as remove_network

IMAGES_ROOT = Path("/var/lib/libvirt/images")


def unique(prefix: str = "vclg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


TestNetwork = DhcpNetwork


def create_network(conn: Any) -> DhcpNetwork:
    return create_dhcp_network(conn)


def random_mac() -> str:
    return "52:54:00:" + ":".join(f"{random.randint(0, 255):02x}" for _ in range(3))


def make_guest_dir() -> Path:
    d = IMAGES_ROOT / unique("vclg")
    d.mkdir(mode=0o755, parents=True)
    return d


def make_overlay(directory: Path, base: Path | None, size: str = "128M") -> Path:
    """A qcow2 over a private copy of ``base`` (or a blank one); libvirt may relabel both."""
    overlay = directory / "disk.qcow2"
    if base is None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(overlay), size], check=True)
    else:
        local = directory / "base.qcow2"
        shutil.copyfile(base, local)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(local), str(overlay)],
            check=True,
        )
    return overlay


def domain_xml(
    name: str, domain_type: str, disk: Path, network: str, mac: str, memory_mib: int, console_log: Path
) -> str:
    dom = ET.Element("domain", {"type": domain_type})
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    ET.SubElement(os_el, "boot", {"dev": "hd"})
    feats = ET.SubElement(dom, "features")
    ET.SubElement(feats, "acpi")
    ET.SubElement(feats, "apic")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    d = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(d, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(d, "source", {"file": str(disk)})
    ET.SubElement(d, "target", {"dev": "vda", "bus": "virtio"})
    nic = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(nic, "mac", {"address": mac})
    ET.SubElement(nic, "source", {"network": network})
    ET.SubElement(nic, "model", {"type": "virtio"})
    serial = ET.SubElement(devices, "serial", {"type": "file"})
    ET.SubElement(serial, "source", {"path": str(console_log)})
    ET.SubElement(serial, "target", {"port": "0"})
    return ET.tostring(dom, encoding="unicode")


def remove_domain(conn: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(name)
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def wait_state(dom: Any, state: int, timeout: float) -> float | None:
    """Seconds until ``dom`` reaches ``state``, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if dom.state()[0] == state:
            return time.monotonic() - start
        time.sleep(0.1)
    return None
