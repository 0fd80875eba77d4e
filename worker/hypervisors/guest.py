"""A small wrapper around one ``virDomain``: state, power, snapshots, undefine, disks and MACs."""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

from worker.hypervisors.errors import LibvirtPermanentError
from worker.hypervisors.host import LibvirtHost

log = logging.getLogger(__name__)

# VCL power_status vocabulary (libvirt.pm:power_status).
_POWER = {
    libvirt.VIR_DOMAIN_RUNNING: "on",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "suspended",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_SHUTDOWN: "off",  # "in shutdown": VCL's regex maps it to off as well
    libvirt.VIR_DOMAIN_SHUTOFF: "off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
}
_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    creation_time: int
    state: str
    description: str


class Guest:
    def __init__(self, host: LibvirtHost, dom: Any) -> None:
        self.host = host
        self._dom = dom

    @property
    def name(self) -> str:
        return str(self._dom.name())

    @property
    def uuid(self) -> str:
        return str(self._dom.UUIDString())

    @property
    def domain(self) -> Any:
        return self._dom

    # ------------------------------------------------------------------ state
    def state(self) -> int:
        with self.host.errors(f"state of {self.name}"):
            return int(self._dom.state()[0])

    def state_name(self) -> str:
        return _STATE_NAMES.get(self.state(), "unknown")

    def power_status(self) -> str:
        return _POWER.get(self.state(), "unknown")

    def is_active(self) -> bool:
        with self.host.errors(f"isActive {self.name}"):
            return bool(self._dom.isActive())

    def info(self) -> dict[str, Any]:
        with self.host.errors(f"info of {self.name}"):
            state, max_mem, mem, vcpus, cpu_time = self._dom.info()
            dom_id = self._dom.ID()
        return {
            "name": self.name,
            "uuid": self.uuid,
            "id": dom_id if dom_id >= 0 else None,
            "state": _STATE_NAMES.get(state, "unknown"),
            "power_status": _POWER.get(state, "unknown"),
            "max_memory_kib": max_mem,
            "memory_kib": mem,
            "vcpus": vcpus,
            "cpu_time_ns": cpu_time,
        }

    # ------------------------------------------------------------------ power
    def start(self) -> None:
        """``virsh start``; an already active domain counts as success."""
        if self.is_active():
            return
        with self.host.errors(f"start {self.name}"):
            try:
                self._dom.createWithFlags(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and self._dom.isActive():
                    return
                raise

    def destroy(self, busy_retry_delay: float = 5.0, attempts: int = 3) -> None:
        """Hard stop. 'not running' is success; 'Device or resource busy' is retried (VCL: 30 s, once)."""
        for attempt in range(1, attempts + 1):
            with self.host.errors(f"destroy {self.name}"):
                try:
                    if not self._dom.isActive():
                        return
                    self._dom.destroy()
                    return
                except libvirt.libvirtError as exc:
                    code = exc.get_error_code()
                    if code == libvirt.VIR_ERR_OPERATION_INVALID and not self._dom.isActive():
                        return
                    if code == libvirt.VIR_ERR_SYSTEM_ERROR and attempt < attempts:
                        log.warning(
                            "destroy %s failed (%s); retrying in %s s", self.name, exc, busy_retry_delay
                        )
                        time.sleep(busy_retry_delay)
                        continue
                    raise

    def shutdown(self) -> None:
        """Send an ACPI shutdown request (returns immediately)."""
        with self.host.errors(f"shutdown {self.name}"):
            try:
                self._dom.shutdown()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not self._dom.isActive():
                    return
                raise

    def wait_for_power_off(self, timeout: float, poll: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.power_status() == "off":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def shutdown_gracefully(self, timeout: float, retry_interval: float) -> bool:
        """ACPI shutdown re-sent every ``retry_interval`` s for up to ``timeout`` s. True when off."""
        if not self.is_active():
            return True
        start = time.monotonic()
        last_sent = start
        self.shutdown()
        while time.monotonic() - start < timeout:
            if not self.is_active():
                return True
            if retry_interval > 0 and time.monotonic() - last_sent >= retry_interval:
                log.info("re-sending shutdown to %s", self.name)
                self.shutdown()
                last_sent = time.monotonic()
            time.sleep(0.5)
        return not self.is_active()

    def power_off(self, graceful_timeout: float = 0, retry_interval: float = 10) -> bool:
        """Graceful shutdown (if ``graceful_timeout`` > 0), then destroy. True if it shut down cleanly."""
        clean = False
        if graceful_timeout > 0:
            clean = self.shutdown_gracefully(graceful_timeout, retry_interval)
            if not clean:
                log.warning("%s did not shut down within %s s; destroying it", self.name, graceful_timeout)
        if not clean:
            self.destroy()
        return clean

    def set_autostart(self, on: bool = True) -> None:
        with self.host.errors(f"autostart {self.name}"):
            self._dom.setAutostart(1 if on else 0)

    # ------------------------------------------------------------------ XML facts
    def xml(self, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with self.host.errors(f"XMLDesc {self.name}"):
            return str(self._dom.XMLDesc(flags))

    def disk_paths(self) -> list[str]:
        """``<source file>`` of every ``device="disk"`` entry, in order."""
        return disk_paths_from_xml(self.xml())

    def mac_addresses(self) -> list[str]:
        return macs_from_xml(self.xml())

    # ------------------------------------------------------------------ snapshots
    def snapshot_names(self) -> list[str]:
        with self.host.errors(f"snapshotListNames {self.name}"):
            return sorted(str(n) for n in self._dom.snapshotListNames(0))

    def snapshot_info(self) -> dict[str, SnapshotInfo]:
        out: dict[str, SnapshotInfo] = {}
        with self.host.errors(f"listAllSnapshots {self.name}"):
            for snap in self._dom.listAllSnapshots(0):
                root = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314 (libvirt or admin XML)
                out[snap.getName()] = SnapshotInfo(
                    name=snap.getName(),
                    creation_time=int(root.findtext("creationTime") or 0),
                    state=root.findtext("state") or "",
                    description=root.findtext("description") or "",
                )
        return out

    def create_snapshot(self, name: str, description: str = "") -> str:
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = name
        if description:
            ET.SubElement(root, "description").text = description
        xml = ET.tostring(root, encoding="unicode")
        with self.host.errors(f"snapshotCreateXML {self.name}/{name}"):
            snap = self._dom.snapshotCreateXML(xml, 0)
            return str(snap.getName())

    def delete_snapshot(self, name: str, children: bool = True) -> None:
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if children else 0
        with self.host.errors(f"snapshot-delete {self.name}/{name}"):
            try:
                snap = self._dom.snapshotLookupByName(name, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                    return
                raise
            snap.delete(flags)

    def delete_all_snapshots(self) -> None:
        # Delete roots with their children; re-list after each delete.
        for _ in range(1000):
            with self.host.errors(f"listAllSnapshots {self.name}"):
                roots = self._dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)
            if not roots:
                return
            self.delete_snapshot(roots[0].getName(), children=True)

    # ------------------------------------------------------------------ undefine
    def undefine(self) -> None:
        """undefineFlags(MANAGED_SAVE|SNAPSHOTS_METADATA|NVRAM) → without NVRAM → plain undefine()."""
        base = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        attempts: list[int | None] = [base | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM, base, None]
        last: libvirt.libvirtError | None = None
        for flags in attempts:
            try:
                if flags is None:
                    self._dom.undefine()
                else:
                    self._dom.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                last = exc
                log.debug("undefine %s with flags %s failed: %s", self.name, flags, exc)
        assert last is not None
        with self.host.errors(f"undefine {self.name}"):
            raise last


def disk_paths_from_xml(xml: str) -> list[str]:
    root = ET.fromstring(xml)  # noqa: S314 (libvirt or admin XML)
    out = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        src = disk.find("source")
        if src is not None and src.get("file"):
            out.append(str(src.get("file")))
    return out


def macs_from_xml(xml: str) -> list[str]:
    root = ET.fromstring(xml)  # noqa: S314 (libvirt or admin XML)
    out = []
    for mac in root.findall("./devices/interface/mac"):
        addr = mac.get("address")
        if addr:
            out.append(addr.lower())
    return out


def require_guest(host: LibvirtHost, name: str) -> Guest:
    dom = host.lookup_domain(name)
    if dom is None:
        from worker.hypervisors.errors import DomainNotFoundError

        raise DomainNotFoundError(f"domain {name!r} does not exist on {host.uri}")
    return Guest(host, dom)


__all__ = [
    "Guest",
    "LibvirtPermanentError",
    "SnapshotInfo",
    "disk_paths_from_xml",
    "macs_from_xml",
    "require_guest",
]
