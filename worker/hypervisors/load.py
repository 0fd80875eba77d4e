"""Load a reservation's image onto its computer (libvirt.pm:load).

Steps, each timed: configuration checks (key files, master) → remove the computer's previous
domains → domain XML → pin the private address (DHCP host entry) → disk (master from the repository
if missing, COW overlay) → define → start → the guest answers on its connect port → boot snapshot
saved (first cold boot of a revision) → post-load (the host key pinned) → :class:`LoadResult`.
A restore replaces disk to start with the snapshot, and runs post-load with the host key verified.
Post-load is the worker's own step (``VCL_POST_LOAD``); a load with ``post_load=none`` settings (the
delegated path: vcld's OS module post-loads) still waits for the guest and pins its host key.
Progress stages are vcld's loadlog names: startload, transfervm, vmsetupconfig, startvm, machinebooted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.config import Settings
from worker.failpoints import failpoint
from worker.hypervisors import domain_xml, postload
from worker.hypervisors.boot_snapshot import BootSnapshot, BootSnapshotOutcome
from worker.hypervisors.context import OperationContext
from worker.hypervisors.domain_spec import domain_spec
from worker.hypervisors.domain_xml import GeneratedMacs, NicSpec
from worker.hypervisors.drivers.base import DiskOptions, PreparedDisk
from worker.hypervisors.errors import UnreadableMasterError
from worker.hypervisors.guest import Guest
from worker.hypervisors.guest_access import (
    GuestAnswer,
    check_configuration,
    pin_private_address,
    run_post_load,
    wait_until_reachable,
)
from worker.hypervisors.host_keys import HostKeyMode
from worker.hypervisors.layout import Layout
from worker.hypervisors.lifecycle import remove_computer_domains, remove_domain


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    domain_name: str
    cow_path: str
    master_path: str
    domain_type: str
    master_copied: bool
    timings: Mapping[str, float]
    # How the user reaches the guest; None when readiness was not checked (see Settings.wait_for_guest).
    answer: GuestAnswer | None = None
    boot_snapshot: BootSnapshotOutcome = BootSnapshotOutcome.NONE
    # MACs generated for the computer's eth0/eth1: the caller records them on the computer row.
    generated_macs: GeneratedMacs = field(default_factory=GeneratedMacs)


def disk_options(settings: Settings) -> DiskOptions:
    return DiskOptions(
        lock_dir=settings.lock_dir,
        info_timeout=settings.qemu_img_info_timeout,
        convert_timeout=settings.qemu_img_convert_timeout,
    )


def load(ctx: OperationContext) -> LoadResult:
    host, layout, settings, progress, watch = ctx.host, ctx.layout, ctx.settings, ctx.progress, ctx.stopwatch
    domain = layout.domain_name
    progress("startload", f"{layout.reservation.computer_short_name} {layout.image_name}")
    # Configuration errors fail at once, before the computer's current domain is touched.
    check_configuration(ctx)
    check_master_readable(layout)
    failpoint("core.before_delete_existing")
    remove_computer_domains(
        host, layout.reservation.computer_short_name, image_state=False, roots=settings.roots
    )
    watch.mark("delete_existing_domains")
    spec = domain_spec(
        host,
        layout,
        domain_type=ctx.driver.get_domain_type(host, settings.domain_type),
        disk_driver_name=ctx.driver.get_disk_driver_name(),
        vnc_listen=settings.vnc_listen,
        vnc_password=settings.vnc_password,
    )
    xml = domain_xml.build_domain_xml(spec)
    watch.mark("generate_domain_xml")
    eth0 = spec.nics[0] if spec.nics else None
    if pin_private_address(host, layout.reservation, eth0):
        watch.mark("dhcp_host_entry")
    snapshot = BootSnapshot.for_load(ctx, spec, xml)
    restored = snapshot.restore() if snapshot else None
    answer, outcome = None, BootSnapshotOutcome.NONE
    if restored is not None:
        disk, guest, answer = restored
        outcome = BootSnapshotOutcome.RESTORED
    else:
        disk, guest = _create_domain(ctx, xml)
        progress("startvm", f"started domain {guest.name}")
        if settings.wait_for_guest and ctx.driver.boots_guests:
            answer, saved = _wait_for_guest(ctx, (disk, guest), eth0, snapshot)
            if saved:
                outcome = BootSnapshotOutcome.SAVED
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
        timings=watch.total(),
        answer=answer,
        boot_snapshot=outcome,
        generated_macs=spec.generated_macs,
    )


def check_master_readable(layout: Layout) -> None:
    """A master that is there but cannot be read is a configuration error of the datastore (its
    permissions, a directory in its place): :class:`UnreadableMasterError`, naming it, at once. A
    missing master is not: it is copied from the repository."""
    path = layout.master_path()
    if not os.path.lexists(path):
        return
    row = f"image revision {layout.image_name!r} in vmprofile {layout.reservation.vmprofile.profile_name!r}"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        return  # a dangling link: as missing
    except OSError as exc:
        raise UnreadableMasterError(
            f"master {path} of {row} (datastorepath) cannot be read: {exc.strerror or exc}"
        ) from exc


def _wait_for_guest(
    ctx: OperationContext,
    made: tuple[PreparedDisk, Guest],
    eth0: NicSpec | None,
    snapshot: BootSnapshot | None,
) -> tuple[GuestAnswer, bool]:
    """The guest must answer and post-load must pass, or the load fails; in between, the first cold
    boot of a revision saves its boot snapshot (before post-load: nothing of it is baked in). A
    failed attempt removes its own domain and COW (and a snapshot whose guest failed post-load) so a
    guest that never booted keeps no CPU and leaves nothing behind. (answer, snapshot saved)."""
    disk, guest = made
    saved = False
    try:
        reached = wait_until_reachable(ctx, eth0.mac if eth0 else None)
        ctx.stopwatch.mark("guest_ready")
        # Before the task can report success: the saved pair is whole, or there is none.
        saved = snapshot is not None and snapshot.save(guest, reached) is not None
        answer = run_post_load(ctx, reached, mode=HostKeyMode.PIN)
        ctx.stopwatch.mark(postload.timing_name(ctx.settings.post_load))
        return answer, saved
    except BaseException:
        if saved and snapshot is not None:
            snapshot.discard()
        _remove_attempt(ctx, disk)
        raise


def _create_domain(ctx: OperationContext, xml: str) -> tuple[PreparedDisk, Guest]:
    """Disk, definition and start; on any failure remove only what this attempt created (the COW,
    the definition), never the master."""
    layout, progress, watch = ctx.layout, ctx.progress, ctx.stopwatch
    disk: PreparedDisk | None = None
    try:
        failpoint("core.before_pre_define")
        disk = ctx.driver.prepare_disk(
            layout.master_image(),
            layout.cow_path,
            disk_options(ctx.settings),
            progress.copy("copy", f"copying {layout.image_name} from the repository"),
        )
        watch.mark("pre_define")
        progress("transfervm", "performed libvirt driver tasks before defining domain")
        failpoint("core.before_define")
        guest = ctx.host.define(xml, autostart=True)
        failpoint("core.after_define")
        watch.mark("define")
        progress("vmsetupconfig", f"defined domain {guest.name}")
        guest.start()
        failpoint("core.after_start")
        watch.mark("power_on")
        return disk, guest
    except BaseException:
        if disk is not None:
            _remove_attempt(ctx, disk)
        raise


def _remove_attempt(ctx: OperationContext, disk: PreparedDisk) -> None:
    """Remove what this load attempt created (the definition, the COW), never the master."""
    with contextlib.suppress(Exception):
        defined = ctx.host.lookup_guest(ctx.layout.domain_name)
        if defined is not None:
            remove_domain(defined, image_state=False, roots=ctx.settings.roots)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(disk.cow_path)


__all__ = ["LoadResult", "check_master_readable", "disk_options", "load"]
