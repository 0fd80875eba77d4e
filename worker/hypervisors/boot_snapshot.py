"""Boot snapshots: a reload of a revision this computer already booted resumes a saved post-boot guest.

After the first cold boot of a revision on a computer (guest answering on its port, **before**
post-load: a site's post-load is never baked into the saved state) the load saves the guest with
libvirt's ``virDomainSave`` (the domain stops; QEMU has flushed the overlay), copies the overlay, and
resumes the user's guest from that very file with ``virDomainRestoreFlags``: the resume proves the
pair restorable before the manifest is written; post-load runs after that. A later load of the same
revision on the same computer copies the saved overlay to the computer's overlay path (a fresh copy:
never the previous user's disk), defines the domain and restores the memory state with the load's
own XML (libvirt accepts it: same name, UUID and MACs; the changes are metadata, the console and a
new VM generation ID), then runs post-load with the host key verified against the computer's pin.

Failures of a restore: a snapshot shown bad (libvirt refuses it, the guest does not answer or post-
load fails) is discarded and the load boots cold; a transient libvirt error keeps it (the task
retries); a host key other than the pinned one fails the load (:class:`HostKeyMismatchError`) with
the restored domain removed and the snapshot discarded. Each removes what the attempt made.

Files and manifest: :mod:`worker.hypervisors.boot_snapshot_files`. Clock and DHCP behaviour, and
what an image must tolerate: README "Boot snapshots".
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from enum import StrEnum
from typing import Any

import libvirt

from worker.hypervisors import boot_snapshot_files as files_mod
from worker.hypervisors import domain_xml, postload
from worker.hypervisors.context import OperationContext
from worker.hypervisors.domain_xml import DomainSpec, ParsedDomain
from worker.hypervisors.drivers.base import PreparedDisk
from worker.hypervisors.drivers.kvm import DISK_MODE, qemu_owner
from worker.hypervisors.errors import HostKeyMismatchError, ProvisioningError, TransientError
from worker.hypervisors.guest import Guest
from worker.hypervisors.guest_access import GuestAnswer, run_post_load, wait_until_reachable
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin
from worker.hypervisors.lifecycle import remove_domain
from worker.hypervisors.postload import GuestShell, PostLoadError
from worker.hypervisors.readiness import wait_for_port
from worker.timing import Stopwatch

log = logging.getLogger(__name__)

# A restored guest is the running OS resumed: it answers within a second or two, or something is
# wrong (then a cold boot is cheaper than waiting out the image's whole reload time).
RESTORE_READY_SECONDS = 60
# Room left free after a save, on top of the memory state itself.
FREE_MARGIN_BYTES = 256 * 2**20
_MiB = 2**20


class BootSnapshotOutcome(StrEnum):
    """What a load did with its boot snapshot (``LoadResult.boot_snapshot``)."""

    RESTORED = "restored"  # the guest was resumed from it
    SAVED = "saved"  # this cold boot made one
    NONE = ""  # neither


class BootSnapshot:
    """The boot snapshot of one load's (computer, revision), built for one ``load()`` call; its
    steps are timed on the load's stopwatch."""

    def __init__(self, ctx: OperationContext, spec: DomainSpec, xml: str) -> None:
        self.ctx, self.spec, self.xml = ctx, spec, xml
        self.host, self.layout = ctx.host, ctx.layout
        self.files = files_mod.snapshot_files(ctx.layout)
        self.record = files_mod.made_from(ctx.host, ctx.layout, spec)

    @classmethod
    def for_load(cls, ctx: OperationContext, spec: DomainSpec, xml: str) -> BootSnapshot | None:
        """None when snapshots do not apply: switched off, no real guest, or no fixed address (a
        restored guest keeps the address it had; only ``privateIPaddress`` makes that the right one)."""
        settings = ctx.settings
        if not (settings.boot_snapshots and settings.wait_for_guest and ctx.driver.boots_guests):
            return None
        if not ctx.reservation.computer_private_ip:
            return None
        return cls(ctx, spec, xml)

    @property
    def _mac(self) -> str | None:
        return self.spec.nics[0].mac if self.spec.nics else None

    # ------------------------------------------------------------------ restore
    def restore(self) -> tuple[PreparedDisk, Guest, GuestAnswer] | None:
        """Resume the saved guest on a fresh copy of its disk; None (nothing left behind) when there
        is no valid snapshot or the restore failed: the caller boots cold."""
        reason = files_mod.stale_reason(self.files, self.record)
        pin = HostKeyPin.for_reservation(self.ctx.settings, self.ctx.reservation, HostKeyMode.VERIFY)
        if reason is None and pin.pinned() is None:
            reason = f"no host key pinned for the computer ({pin.path})"
        if reason is not None:
            if any(os.path.exists(p) for p in self.files.finals):
                log.info("boot snapshot of %s discarded: %s", self.layout.domain_name, reason)
                self.files.remove()
            return None
        assert self.record is not None
        cow, name = self.layout.cow_path, self.layout.domain_name
        progress, watch = self.ctx.progress, self.ctx.stopwatch
        try:
            _copy_disk(self.files.disk, cow)
            watch.mark("snapshot_disk_copy")
            progress("transfervm", f"fresh copy of the boot snapshot's disk of {self.layout.image_name}")
            guest = self.host.define(self.xml, autostart=True)
            progress("vmsetupconfig", f"defined domain {guest.name}")
            self._restore_file(self.files.memory, self._restore_xml())
            watch.mark("snapshot_restore")
            progress("startvm", f"restored domain {name} from its boot snapshot")
            quick = dataclasses.replace(
                self.ctx, settings=dataclasses.replace(self.ctx.settings, ready_timeout=RESTORE_READY_SECONDS)
            )
            reached = wait_until_reachable(quick, self._mac)
            watch.mark("guest_ready")
            # Post-load after every restore, the host key verified; the clock is set on post-load's
            # own SSH session, before post-load writes its files.
            answer = run_post_load(quick, reached, mode=HostKeyMode.VERIFY, first=self.set_clock)
            watch.mark(postload.timing_name(quick.settings.post_load))
        except HostKeyMismatchError as exc:
            log.error("restore of %s refused: %s", name, exc)
            self._undo()
            self.files.remove()  # in doubt: the next load boots cold
            raise
        except TransientError as exc:
            log.warning("restore of %s interrupted, its boot snapshot kept: %s", name, exc)
            self._undo()
            raise
        except OSError as exc:  # the copy of the disk: the host's trouble, not the snapshot's
            log.warning("restore of %s failed, booting cold instead: %s", name, exc)
            self._undo()
            return None
        except ProvisioningError as exc:
            log.warning("restore of %s failed, booting cold instead: %s", name, exc)
            self._undo()
            self.files.remove()
            return None
        except BaseException:
            self._undo()
            raise
        disk = PreparedDisk(master_path=self.record["master"]["path"], cow_path=cow, master_copied=False)
        return disk, guest, answer

    def _restore_xml(self) -> str:
        """The load's XML with the VM generation ID of the save image: libvirt refuses any other
        ("Target domain genid … does not match source") and itself gives the domain a new one when it
        starts it from a save image, which QEMU writes into the guest with the vmgenid ACPI
        notification (the guest's kernel reseeds its RNG)."""
        path = self.files.memory
        saved = self.host.call(f"saveImageGetXMLDesc({path})", lambda c: str(c.saveImageGetXMLDesc(path, 0)))
        genid = ParsedDomain.parse(saved).genid
        return domain_xml.build_domain_xml(dataclasses.replace(self.spec, genid=genid))

    def _restore_file(self, path: str, xml: str | None) -> None:
        self.host.call(
            f"restore {self.layout.domain_name} from {path}",
            lambda c: c.restoreFlags(path, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING),
        )

    def _undo(self) -> None:
        """Remove the domain and overlay a failed restore made, never the snapshot's own files."""
        with contextlib.suppress(Exception):
            guest = self.host.lookup_guest(self.layout.domain_name)
            if guest is not None:
                remove_domain(guest, image_state=False, roots=self.ctx.settings.roots)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.layout.cow_path)

    def set_clock(self, shell: GuestShell) -> None:
        """Set the guest's clock to the host's (``date -u -s @<host time>``) on an open session.

        The resumed guest's clock stands where it stood at the save. Images without a guest agent
        cannot be reached through libvirt's virDomainSetTime, so this uses the post-load login. A
        refused ``date`` only warns; a lost connection propagates (post-load retries the session)."""
        try:
            shell.check(["date", "-u", "-s", f"@{round(time.time())}"])
        except PostLoadError as exc:
            log.warning("%s: guest clock not set after the restore: %s", shell.login.address, exc)
            return
        log.info("%s: guest clock set after the restore", shell.login.address)

    # ------------------------------------------------------------------ save
    def save(self, guest: Guest, answer: GuestAnswer) -> dict[str, Any] | None:
        """Save the answering guest (before post-load) as this revision's boot snapshot, resume it,
        and return the manifest's cost record; None when no snapshot was made (the guest runs on)."""
        # Read again: a master copied from the repository by this load did not exist before it.
        self.record = files_mod.made_from(self.host, self.layout, self.spec)
        if self.record is None:
            return None
        self.files.remove()  # an older snapshot of this name was stale, or this save replaces it
        free = shutil.disk_usage(self.layout.vm_path).free
        if free < self.spec.memory_mib * _MiB + FREE_MARGIN_BYTES:
            log.warning(
                "no boot snapshot of %s: %d MiB free in %s", guest.name, free // _MiB, self.layout.vm_path
            )
            return None
        mem, disk = self.files.part(self.files.memory), self.files.part(self.files.disk)
        watch = self.ctx.stopwatch
        cost_watch = Stopwatch()  # the manifest's own record of what the save cost
        try:
            # Made by us first (O_EXCL|O_NOFOLLOW, 0600): libvirt then writes into this very file.
            os.close(files_mod.create_exclusive(mem))
            self.host.call(f"save {guest.name}", lambda c: c.lookupByName(guest.name).saveFlags(mem, None, 0))
        except (ProvisioningError, OSError) as exc:
            log.warning("no boot snapshot of %s: save failed: %s", guest.name, exc)
            self.files.remove()
            if not guest.is_active():
                self._cold_restart(guest, answer)
            return None
        save_seconds = cost_watch.mark("save")
        watch.mark("snapshot_save")
        copied = True
        try:
            # The domain is stopped: the overlay is quiescent and matches the memory state exactly.
            files_mod.copy_exclusive(self.layout.cow_path, disk)
            _seal(mem)
        except OSError as exc:
            log.warning("no boot snapshot of %s: copying the overlay failed: %s", guest.name, exc)
            copied = False
        watch.mark("snapshot_disk_copy")
        resumed = self._resume(guest, answer, mem)
        watch.mark("snapshot_resume")
        if not (copied and resumed):
            self.files.remove()
            return None
        os.rename(mem, self.files.memory)
        os.rename(disk, self.files.disk)
        cost = {
            "saved_at": time.time(),
            "save_seconds": save_seconds,
            "total_seconds": cost_watch.elapsed(),
            "address": answer.address,
        }
        files_mod.write_manifest(self.files, self.record, cost)
        size = os.path.getsize(self.files.memory)
        log.info(
            "boot snapshot of %s saved in %.1f s: memory state %d MiB, disk %d MiB",
            guest.name, cost["total_seconds"], size // _MiB, os.path.getsize(self.files.disk) // _MiB,
        )  # fmt: skip
        return {**cost, "memory_bytes": size}

    def _resume(self, guest: Guest, answer: GuestAnswer, mem: str) -> bool:
        """The user's guest runs again and answers: resumed from ``mem`` (True: the pair is proven
        restorable), else booted cold from its overlay (False)."""
        try:
            self._restore_file(mem, None)
            wait_for_port(answer.address, answer.port, deadline=RESTORE_READY_SECONDS)
            return True
        except ProvisioningError as exc:
            log.warning("%s did not resume from its save (%s); booting it cold", guest.name, exc)
        self._cold_restart(guest, answer)
        return False

    def _cold_restart(self, guest: Guest, answer: GuestAnswer) -> None:
        guest.power_off()
        guest.start()
        wait_until_reachable(self.ctx, self._mac)  # the load's post-load follows

    def discard(self) -> None:
        """Remove this snapshot: the guest it was saved from did not pass its post-load."""
        if self.files.remove():
            log.warning("boot snapshot of %s discarded: its guest failed post-load", self.layout.domain_name)


def _seal(path: str) -> None:
    """A file libvirt wrote: back to mode 0600 (without following a link) and on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, files_mod.FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_disk(src: str, dst: str) -> None:
    """``dst`` = a new copy of ``src`` (written to ``.part``, renamed), with a domain disk's mode; a
    ``.part`` already there (a leftover, or a planted symlink) is removed, never written through."""
    tmp = dst + files_mod.PART
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        files_mod.copy_exclusive(src, tmp, DISK_MODE)
        owner = qemu_owner()
        if owner is not None:
            os.chown(tmp, *owner)
        os.rename(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = ["RESTORE_READY_SECONDS", "BootSnapshot", "BootSnapshotOutcome"]
