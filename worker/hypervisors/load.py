"""Load a reservation's image onto its computer (libvirt.pm:load).

Steps, each timed: remove the computer's previous domains → domain XML → pin the private address
(DHCP host entry) → disk (master from the repository if missing, COW overlay) → define → start →
the guest answers on its connect port and post-load runs → :class:`LoadResult`.
Progress stages are vcld's loadlog names: startload, transfervm, vmsetupconfig, startvm, machinebooted.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from worker.config import Settings
from worker.failpoints import failpoint
from worker.hypervisors import domain_xml
from worker.hypervisors.boot_snapshot import BootSnapshot
from worker.hypervisors.domain_spec import domain_spec
from worker.hypervisors.domain_xml import NicSpec
from worker.hypervisors.drivers.base import DiskOptions, Driver, PreparedDisk
from worker.hypervisors.guest import Guest
from worker.hypervisors.guest_access import GuestAnswer, pin_private_address, wait_until_answering
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout
from worker.hypervisors.lifecycle import remove_computer_domains, remove_domain
from worker.hypervisors.progress import Progress


@dataclass(frozen=True)
class LoadResult:
    domain_name: str
    cow_path: str
    master_path: str
    domain_type: str
    master_copied: bool
    timings: Mapping[str, float]
    # How the user reaches the guest; None when readiness was not checked (see Settings.wait_for_guest).
    answer: GuestAnswer | None = None
    # "restored" (from the boot snapshot), "saved" (this cold boot made one) or "" (neither).
    boot_snapshot: str = ""


def disk_options(settings: Settings) -> DiskOptions:
    return DiskOptions(
        lock_dir=settings.lock_dir,
        info_timeout=settings.qemu_img_info_timeout,
        convert_timeout=settings.qemu_img_convert_timeout,
    )


class _Clock:
    """Seconds per step, for the task summary and the benchmarks."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = self._last = time.monotonic()

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.timings[step] = round(now - self._last, 3)
        self._last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round(time.monotonic() - self._start, 3)
        return self.timings


def load(
    host: LibvirtHost, driver: Driver, layout: Layout, settings: Settings, progress: Progress
) -> LoadResult:
    clock = _Clock()
    domain = layout.domain_name
    progress("startload", f"{layout.reservation.computer_short_name} {layout.image_name}")
    failpoint("core.before_delete_existing")
    remove_computer_domains(host, layout.reservation.computer_short_name, False, settings.roots)
    clock.mark("delete_existing_domains")
    domain_type = driver.get_domain_type(host, settings.domain_type)
    spec = domain_spec(
        host, layout, domain_type, driver.get_disk_driver_name(), settings.vnc_listen, settings.vnc_password
    )
    xml = domain_xml.build_domain_xml(spec)
    clock.mark("generate_domain_xml")
    eth0 = spec.nics[0] if spec.nics else None
    if pin_private_address(host, layout.reservation, eth0):
        clock.mark("dhcp_host_entry")
    snapshot = BootSnapshot.for_load(host, driver, layout, spec, xml, settings)
    restored = snapshot.restore(progress, clock.mark) if snapshot else None
    answer, made = None, ""
    if restored is not None:
        disk, guest, answer = restored
        made = "restored"
    else:
        disk, guest = _create_domain(host, driver, layout, xml, settings, progress, clock)
        progress("startvm", f"started domain {guest.name}")
        if settings.wait_for_guest and driver.boots_guests:
            answer = _wait_for_guest(host, layout, guest, disk, eth0, settings)
            clock.mark("guest_ready")
            # Before the task can report success: the saved pair is whole, or there is none.
            if snapshot is not None and snapshot.save(guest, answer, clock.mark) is not None:
                made = "saved"
    if answer is not None:
        progress(
            "machinebooted",
            f"{answer.address}:{answer.port} answered after {answer.seconds:.1f} s {answer.banner}".strip(),
        )
    return LoadResult(
        domain_name=domain,
        cow_path=disk.cow_path,
        master_path=disk.master_path,
        domain_type=spec.domain_type,
        master_copied=disk.master_copied,
        timings=clock.total(),
        answer=answer,
        boot_snapshot=made,
    )


def _wait_for_guest(
    host: LibvirtHost,
    layout: Layout,
    guest: Guest,
    disk: PreparedDisk,
    eth0: NicSpec | None,
    settings: Settings,
) -> GuestAnswer:
    """The guest must answer (and post-load must pass) or the load fails; a failed attempt removes
    its own domain and COW so a guest that never booted keeps no CPU and leaves nothing behind."""
    try:
        return wait_until_answering(
            host, guest.name, layout.reservation, eth0.mac if eth0 else None, settings
        )
    except BaseException:
        _remove_attempt(host, layout, disk, settings)
        raise


def _create_domain(
    host: LibvirtHost,
    driver: Driver,
    layout: Layout,
    xml: str,
    settings: Settings,
    progress: Progress,
    clock: _Clock,
) -> tuple[PreparedDisk, Guest]:
    """Disk, definition and start; on any failure remove only what this attempt created (the COW,
    the definition), never the master."""
    disk: PreparedDisk | None = None
    try:
        failpoint("core.before_pre_define")
        disk = driver.prepare_disk(
            layout.master_image(),
            layout.cow_path,
            disk_options(settings),
            progress.copy("copy", f"copying {layout.image_name} from the repository"),
        )
        clock.mark("pre_define")
        progress("transfervm", "performed libvirt driver tasks before defining domain")
        failpoint("core.before_define")
        guest = host.define(xml, autostart=True)
        failpoint("core.after_define")
        clock.mark("define")
        progress("vmsetupconfig", f"defined domain {guest.name}")
        guest.start()
        failpoint("core.after_start")
        clock.mark("power_on")
        return disk, guest
    except BaseException:
        if disk is not None:
            _remove_attempt(host, layout, disk, settings)
        raise


def _remove_attempt(host: LibvirtHost, layout: Layout, disk: PreparedDisk, settings: Settings) -> None:
    """Remove what this load attempt created (the definition, the COW), never the master."""
    with contextlib.suppress(Exception):
        defined = host.lookup_guest(layout.domain_name)
        if defined is not None:
            remove_domain(defined, False, settings.roots)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(disk.cow_path)


__all__ = ["LoadResult", "disk_options", "load"]
