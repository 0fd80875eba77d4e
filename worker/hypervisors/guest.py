"""One libvirt domain (Nova's guest.py): state, power, snapshot deletion, disks, MACs, deletion.

Guests are handed out by :class:`worker.hypervisors.host.LibvirtHost` (``list_guests``,
``lookup_guest``, ``require_guest``, ``define``); nothing else wraps a raw ``virDomain``. Every libvirt
call runs inside ``host.errors()``, so callers only ever see the typed errors of
:mod:`worker.hypervisors.errors`.

Power vocabulary, the same in the provisioner: ``power_off`` is the hard stop (``virsh destroy``, VCL's
power_off); ``shutdown`` is the graceful ACPI shutdown that falls back to ``power_off``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import libvirt

from worker.hypervisors.domain_xml import DiskSource, ParsedDomain

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost

log = logging.getLogger(__name__)


class PowerState(StrEnum):
    """VCL's power_status vocabulary (libvirt.pm:power_status); equal to its plain strings."""

    ON = "on"
    OFF = "off"
    BLOCKED = "blocked"
    SUSPENDED = "suspended"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


_POWER = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.ON,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.SUSPENDED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.OFF,  # "in shutdown": VCL's regex maps it to off as well
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.OFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
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


@dataclass(frozen=True, kw_only=True)
class GuestInfo:
    """``virsh dominfo`` of one domain; ``id`` is None while it is not running."""

    name: str
    uuid: str
    id: int | None
    state: str
    power_status: PowerState
    max_memory_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


class Guest:
    def __init__(self, host: LibvirtHost, dom: libvirt.virDomain) -> None:
        self.host = host
        self._dom = dom

    @property
    def name(self) -> str:
        return str(self._dom.name())

    # ------------------------------------------------------------------ state
    def power_status(self) -> PowerState:
        with self.host.errors(f"state of {self.name}"):
            return _POWER.get(int(self._dom.state()[0]), PowerState.UNKNOWN)

    def is_active(self) -> bool:
        with self.host.errors(f"isActive {self.name}"):
            return bool(self._dom.isActive())

    def info(self) -> GuestInfo:
        with self.host.errors(f"info of {self.name}"):
            state, max_mem, mem, vcpus, cpu_time = self._dom.info()
            dom_id = int(self._dom.ID())
            uuid = str(self._dom.UUIDString())
        return GuestInfo(
            name=self.name,
            uuid=uuid,
            id=dom_id if dom_id >= 0 else None,
            state=_STATE_NAMES.get(state, "unknown"),
            power_status=_POWER.get(state, PowerState.UNKNOWN),
            max_memory_kib=int(max_mem),
            memory_kib=int(mem),
            vcpus=int(vcpus),
            cpu_time_ns=int(cpu_time),
        )

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

    def power_off(self, busy_retry_delay: float = 5.0, attempts: int = 3) -> None:
        """Hard stop (``virsh destroy``). 'Not running' is success; 'Device or resource busy' is retried
        (VCL waits 30 s once; QEMU holding a disk lock usually lets go within seconds)."""
        for attempt in range(1, attempts + 1):
            with self.host.errors(f"destroy {self.name}"):
                try:
                    if self._dom.isActive():
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

    def _request_shutdown(self) -> None:
        """Send one ACPI shutdown request (returns at once)."""
        with self.host.errors(f"shutdown {self.name}"):
            try:
                self._dom.shutdown()
            except libvirt.libvirtError as exc:
                # "domain is not running": already off, or going down (a re-sent request that
                # crossed the guest's own shutdown); either way the request has nothing left to do.
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and (
                    not self._dom.isActive() or self._dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING
                ):
                    return
                raise

    def shutdown(self, timeout: float, retry_interval: float) -> bool:
        """ACPI shutdown, re-sent every ``retry_interval`` s; after ``timeout`` s, :meth:`power_off`.

        True when the guest shut itself down (a capture then copies a consistent disk), False when it
        had to be destroyed.
        """
        if not self.is_active():
            return True
        start = last_sent = time.monotonic()
        self._request_shutdown()
        while time.monotonic() - start < timeout:
            if not self.is_active():
                return True
            if retry_interval > 0 and time.monotonic() - last_sent >= retry_interval:
                log.info("re-sending shutdown to %s", self.name)
                self._request_shutdown()
                last_sent = time.monotonic()
            time.sleep(0.5)
        if not self.is_active():
            return True
        log.warning("%s did not shut down within %s s; destroying it", self.name, timeout)
        self.power_off()
        return False

    def set_autostart(self, *, on: bool = True) -> None:
        with self.host.errors(f"autostart {self.name}"):
            self._dom.setAutostart(1 if on else 0)

    # ------------------------------------------------------------------ XML facts
    def xml(self, *, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with self.host.errors(f"XMLDesc {self.name}"):
            return str(self._dom.XMLDesc(flags))

    def definition(self) -> ParsedDomain:
        """The live domain XML, parsed."""
        return ParsedDomain.parse(self.xml())

    def disks(self) -> list[DiskSource]:
        """``<source file>`` and ``<driver type>`` of every ``device="disk"`` entry, in order."""
        return list(self.definition().file_disks)

    def disk_paths(self) -> list[str]:
        return [d.path for d in self.disks()]

    def mac_addresses(self) -> list[str]:
        return self.definition().macs

    # ------------------------------------------------------------------ snapshots
    def delete_snapshot(self, name: str, *, children: bool = True) -> None:
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
        # Delete roots with their children; re-list after each delete (bounded against a loop).
        for _ in range(1000):
            with self.host.errors(f"listAllSnapshots {self.name}"):
                roots = self._dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)
            if not roots:
                return
            self.delete_snapshot(roots[0].getName(), children=True)

    # ------------------------------------------------------------------ undefine / delete
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

    def delete(self, may_delete_disk: Callable[[str], bool]) -> list[str]:
        """Power off, delete snapshots and the disks ``may_delete_disk`` accepts, undefine (VCL
        delete_domain). Returns the disks deleted; a disk refused or already gone is left alone."""
        self.power_off()
        self.delete_all_snapshots()
        deleted: list[str] = []
        for path in self.disk_paths():
            if not may_delete_disk(path):
                log.warning("not deleting disk %s of %s", path, self.name)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:  # VCL: a disk that cannot be removed does not stop the undefine
                log.warning("could not delete %s: %s", path, exc)
                continue
            log.info("deleted disk %s of %s", path, self.name)
            deleted.append(path)
        self.undefine()
        return deleted


__all__ = ["DiskSource", "Guest", "GuestInfo", "PowerState"]
