"""Domain XML built with ElementTree (never string concatenation), plus master-XML readers.

Choices (documented deviations from libvirt.pm:generate_domain_xml):

* disk bus / NIC model come from the master's saved XML; the defaults stay VCL's ``ide`` / ``rtl8139``
  because images captured elsewhere (VMware, Windows without virtio drivers) boot on them. The target
  device follows the bus (VCL always wrote ``vda``): ``hda`` for ide, ``vda`` for virtio, ``sda`` for
  sata/scsi/usb, ``xvda`` for xen.
* vCPU topology is ``sockets=count, cores=1, threads=1`` (valid for every count; VCL's odd-count bug fixed).
* ``on_poweroff=destroy`` and ``on_crash=destroy``: a guest that powers itself off is reported as
  ``shut off`` (what the capture/power-off polling waits for). ``preserve`` is not used.
* ``<uuid>`` is deterministic per computer so a redefine updates instead of failing "already exists".
* VNC listens on ``settings.vnc_listen`` with autoport, with ``passwd`` when a VNC password is set
  (required for a non-loopback listen). libvirt never returns the password in XML without
  ``VIR_DOMAIN_XML_SECURE``, so the saved master XML does not carry it; it is kept out of ``repr``.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

DEFAULT_DISK_BUS = "ide"
DEFAULT_NIC_MODEL = "rtl8139"
MIN_MEMORY_MIB = 512
_UUID_NAMESPACE = uuidlib.UUID("1d3c5a0e-9f0b-5b5e-8a43-76636c2d776b")
_DEV_PREFIX = {"ide": "hd", "virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd", "xen": "xvd"}


@dataclass(frozen=True)
class NicSpec:
    kind: str  # "network" or "bridge"
    source: str
    mac: str
    model: str = DEFAULT_NIC_MODEL


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    domain_type: str  # kvm | qemu
    memory_mib: int
    vcpus: int
    disk_path: str
    disk_format: str = "qcow2"
    disk_driver_name: str = "qemu"
    disk_bus: str = DEFAULT_DISK_BUS
    disk_cache: str | None = None
    clock_offset: str = "utc"
    description: str = ""
    vnc_listen: str = "127.0.0.1"
    vnc_password: str | None = field(default=None, repr=False)
    nics: tuple[NicSpec, ...] = field(default_factory=tuple)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"


def computer_uuid(computer_id: int, hostname: str) -> str:
    """Deterministic UUID per computer (uuid5)."""
    return str(uuidlib.uuid5(_UUID_NAMESPACE, f"vcl-computer:{computer_id}:{hostname.lower()}"))


def memory_mib(minram_mb: int) -> int:
    return max(int(minram_mb or 0), MIN_MEMORY_MIB)


def vcpu_topology(count: int) -> tuple[int, int, int]:
    """(sockets, cores, threads); sockets*cores*threads == count for every count >= 1."""
    count = max(int(count or 1), 1)
    return count, 1, 1


def disk_target_dev(bus: str) -> str:
    return _DEV_PREFIX.get(bus, "hd") + "a"


def build_domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", {"type": spec.domain_type})
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "uuid").text = spec.uuid
    ET.SubElement(dom, "description").text = spec.description
    ET.SubElement(dom, "memory", {"unit": "KiB"}).text = str(spec.memory_mib * 1024)
    ET.SubElement(dom, "currentMemory", {"unit": "KiB"}).text = str(spec.memory_mib * 1024)
    count = max(spec.vcpus, 1)
    ET.SubElement(dom, "vcpu", {"placement": "static"}).text = str(count)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64"}).text = "hvm"
    ET.SubElement(os_el, "boot", {"dev": "hd"})
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    cpu = ET.SubElement(dom, "cpu")
    sockets, cores, threads = vcpu_topology(count)
    ET.SubElement(cpu, "topology", {"sockets": str(sockets), "cores": str(cores), "threads": str(threads)})
    ET.SubElement(dom, "clock", {"offset": spec.clock_offset})
    ET.SubElement(dom, "on_poweroff").text = spec.on_poweroff
    ET.SubElement(dom, "on_reboot").text = spec.on_reboot
    ET.SubElement(dom, "on_crash").text = spec.on_crash
    devices = ET.SubElement(dom, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    drv = {"name": spec.disk_driver_name, "type": spec.disk_format}
    if spec.disk_cache:
        drv["cache"] = spec.disk_cache
    ET.SubElement(disk, "driver", drv)
    ET.SubElement(disk, "source", {"file": spec.disk_path})
    ET.SubElement(disk, "target", {"dev": disk_target_dev(spec.disk_bus), "bus": spec.disk_bus})
    for nic in spec.nics:
        iface = ET.SubElement(devices, "interface", {"type": nic.kind})
        ET.SubElement(iface, "mac", {"address": nic.mac})
        ET.SubElement(iface, "source", {nic.kind: nic.source})
        ET.SubElement(iface, "model", {"type": nic.model})
    graphics = {"type": "vnc", "autoport": "yes", "listen": spec.vnc_listen}
    if spec.vnc_password:
        graphics["passwd"] = spec.vnc_password
    ET.SubElement(devices, "graphics", graphics)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def description_text(
    image_prettyname: str,
    image_name: str,
    load_time: str,
    management_node: str,
    request_id: int,
    reservation_id: int,
) -> str:
    """VCL's description lines."""
    return (
        f"image: {image_prettyname}\n"
        f"revision: {image_name}\n"
        f"load time: {load_time}\n"
        f"management node: {management_node}\n"
        f"request ID: {request_id}\n"
        f"reservation ID: {reservation_id}\n"
    )


def master_xml_disk_bus(xml: str | None) -> str | None:
    """``bus`` of the first ``device="disk"`` target in a saved master XML, or None."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt or admin XML)
    except ET.ParseError:
        return None
    for disk in root.iter("disk"):
        if disk.get("device", "disk") == "disk":
            target = disk.find("target")
            if target is not None and target.get("bus"):
                return target.get("bus")
    return None


def disk_backing_file(xml: str | None, disk_path: str) -> str | None:
    """``<backingStore><source file>`` of the disk whose source is ``disk_path``, from a running
    domain's live XML (libvirt fills it in at start). How to learn an in-use overlay's master
    without opening the overlay past QEMU's image lock (qemu-img would need ``-U``)."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt's XML)
    except ET.ParseError:
        return None
    for disk in root.iter("disk"):
        source = disk.find("source")
        if source is None or source.get("file") != disk_path:
            continue
        backing = disk.find("backingStore/source")
        return None if backing is None else backing.get("file")
    return None


def master_xml_interface_model(xml: str | None) -> str | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt or admin XML)
    except ET.ParseError:
        return None
    for iface in root.iter("interface"):
        model = iface.find("model")
        if model is not None and model.get("type"):
            return model.get("type")
    return None


__all__ = [
    "DEFAULT_DISK_BUS",
    "DEFAULT_NIC_MODEL",
    "DomainSpec",
    "NicSpec",
    "build_domain_xml",
    "computer_uuid",
    "description_text",
    "disk_backing_file",
    "disk_target_dev",
    "master_xml_disk_bus",
    "master_xml_interface_model",
    "memory_mib",
    "vcpu_topology",
]
