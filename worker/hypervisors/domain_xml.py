"""Domain XML: written with ElementTree (never string concatenation), read back as one model.

Every read of a domain definition (a guest's disks and MACs, a master's saved disk bus and NIC
model, a running overlay's backing file) goes through :class:`ParsedDomain`, and every XML the core
reads is parsed by :func:`parse_xml`.

Choices (documented deviations from libvirt.pm:generate_domain_xml):

* disk bus / NIC model come from the master's saved XML; the defaults stay VCL's ``ide`` / ``rtl8139``
  because images captured elsewhere (VMware, Windows without virtio drivers) boot on them. The target
  device follows the bus (VCL always wrote ``vda``): ``hda`` for ide, ``vda`` for virtio, ``sda`` for
  sata/scsi/usb, ``xvda`` for xen.
* vCPU topology is ``sockets=count, cores=1, threads=1`` (valid for every count; VCL's odd-count bug fixed).
* ``on_poweroff=destroy`` and ``on_crash=destroy``: a guest that powers itself off is reported as
  ``shut off`` (what the capture/power-off polling waits for). ``preserve`` is not used.
* ``<uuid>`` is deterministic per computer so a redefine updates instead of failing "already exists".
* ``<genid>`` (VM generation ID, QEMU's vmgenid device) is a new random value on every cold load;
  libvirt gives a domain restored from a save image a new one itself, which the guest sees change
  (Linux's vmgenid driver reseeds the kernel RNG; Windows has its VM-Generation-ID).
* VNC listens on ``settings.vnc_listen`` with autoport, with ``passwd`` when a VNC password is set
  (required for a non-loopback listen). libvirt never returns the password in XML without
  ``VIR_DOMAIN_XML_SECURE``, so the saved master XML does not carry it; it is kept out of ``repr``.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from worker.hypervisors.errors import MalformedXmlError

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


@dataclass(frozen=True, kw_only=True)
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
    genid: str | None = None  # None: ``<genid/>``, libvirt makes one


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
    ET.SubElement(dom, "genid").text = spec.genid
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
    *,
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


# --------------------------------------------------------------------------- reading


def parse_xml(text: str) -> ET.Element:
    """The one place the core parses XML: libvirt's own (domains, snapshots, networks, capabilities)
    or a master's saved domain XML, which the site's administrators write. Neither is user input, and
    Python's expat resolves no external entities and (2.4.1+) bounds entity expansion."""
    try:
        return ET.fromstring(text)  # noqa: S314 (libvirt's or the administrators' XML, see above)
    except ET.ParseError as exc:
        raise MalformedXmlError(f"unparsable XML ({exc}): {text[:120]!r}") from exc


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


@dataclass(frozen=True, kw_only=True)
class DomainDisk:
    """One ``<devices><disk>`` of a definition."""

    device: str  # disk | cdrom | floppy | lun
    path: str | None  # <source file>; None for a disk without one (an empty cdrom, a block device)
    format: str | None  # <driver type>
    target_dev: str | None
    bus: str | None
    # <backingStore><source file>: only a running domain's live XML names it (libvirt fills it in).
    backing_file: str | None


@dataclass(frozen=True)
class DiskSource:
    """A file-backed ``device="disk"``: what capture copies and deletion removes."""

    path: str
    format: str | None  # <driver type=…>; None when the definition does not say


@dataclass(frozen=True)
class DomainInterface:
    kind: str | None  # network | bridge | …
    source: str | None  # the network's or bridge's name
    mac: str | None
    model: str | None


@dataclass(frozen=True, kw_only=True)
class DomainGraphics:
    kind: str | None  # vnc | spice
    listen: str | None
    port: int | None  # -1 while autoport has not picked one
    has_password: bool  # libvirt shows ``passwd`` only with VIR_DOMAIN_XML_SECURE


@dataclass(frozen=True, kw_only=True)
class ParsedDomain:
    """A domain definition as read back: every reader of domain XML goes through this."""

    name: str
    uuid: str
    description: str
    disks: tuple[DomainDisk, ...]
    interfaces: tuple[DomainInterface, ...]
    graphics: tuple[DomainGraphics, ...]
    genid: str | None = None  # the VM generation ID, when the domain has one

    @classmethod
    def parse(cls, xml: str) -> ParsedDomain:
        """Raises :class:`MalformedXmlError` for XML that does not parse."""
        root = parse_xml(xml)
        return cls(
            name=root.findtext("name") or "",
            uuid=root.findtext("uuid") or "",
            genid=(root.findtext("genid") or "").strip() or None,
            description=root.findtext("description") or "",
            disks=tuple(_disk(el) for el in root.findall("./devices/disk")),
            interfaces=tuple(_interface(el) for el in root.findall("./devices/interface")),
            graphics=tuple(_graphics(el) for el in root.findall("./devices/graphics")),
        )

    @classmethod
    def parse_or_none(cls, xml: str | None) -> ParsedDomain | None:
        """For XML that may be missing or broken (a master's saved XML): None instead of an error."""
        if not xml:
            return None
        try:
            return cls.parse(xml)
        except MalformedXmlError:
            return None

    @property
    def file_disks(self) -> tuple[DiskSource, ...]:
        """The ``device="disk"`` entries backed by a file, in order."""
        return tuple(DiskSource(d.path, d.format) for d in self.disks if d.device == "disk" and d.path)

    @property
    def macs(self) -> list[str]:
        """Interface MACs, lowercase, in order."""
        return [i.mac.lower() for i in self.interfaces if i.mac]

    @property
    def disk_bus(self) -> str | None:
        """``bus`` of the first ``device="disk"`` target that names one."""
        return next((d.bus for d in self.disks if d.device == "disk" and d.bus), None)

    @property
    def nic_model(self) -> str | None:
        """``<model type>`` of the first interface that names one."""
        return next((i.model for i in self.interfaces if i.model), None)

    def backing_file(self, disk_path: str) -> str | None:
        """The backing file of the disk whose source is ``disk_path`` (live XML of a running domain):
        how to learn an in-use overlay's master without opening the overlay past QEMU's image lock
        (qemu-img would need ``-U``)."""
        return next((d.backing_file for d in self.disks if d.path == disk_path), None)


def _disk(el: ET.Element) -> DomainDisk:
    source, driver, target = el.find("source"), el.find("driver"), el.find("target")
    backing = el.find("backingStore/source")
    return DomainDisk(
        device=el.get("device", "disk"),
        path=None if source is None else source.get("file"),
        format=None if driver is None else driver.get("type"),
        target_dev=None if target is None else target.get("dev"),
        bus=None if target is None else target.get("bus"),
        backing_file=None if backing is None else backing.get("file"),
    )


def _interface(el: ET.Element) -> DomainInterface:
    kind, source, mac, model = el.get("type"), el.find("source"), el.find("mac"), el.find("model")
    return DomainInterface(
        kind=kind,
        source=None if source is None or kind is None else source.get(kind),
        mac=None if mac is None else mac.get("address"),
        model=None if model is None else model.get("type"),
    )


def _graphics(el: ET.Element) -> DomainGraphics:
    return DomainGraphics(
        kind=el.get("type"),
        listen=el.get("listen"),
        port=_int_or_none(el.get("port")),
        has_password="passwd" in el.attrib,
    )


__all__ = [
    "DEFAULT_DISK_BUS",
    "DEFAULT_NIC_MODEL",
    "DiskSource",
    "DomainDisk",
    "DomainGraphics",
    "DomainInterface",
    "DomainSpec",
    "NicSpec",
    "ParsedDomain",
    "build_domain_xml",
    "computer_uuid",
    "description_text",
    "disk_target_dev",
    "memory_mib",
    "parse_xml",
    "vcpu_topology",
]
