"""Capture a computer's domain into a new image revision (libvirt.pm:capture).

The domain is found by the computer's MAC, shut down (gracefully, then hard), and its COW flattened
with ``qemu-img convert`` into a new standalone read-only master under the per-image lock, plus a
repository copy when the vmprofile has a repository. An existing revision is never overwritten.

Unlike libvirt.pm (which deletes the domain at the end of ``capture``), :func:`capture` leaves the
domain in place: :func:`remove_captured_domain` deletes it only after the caller has recorded the new
image in the database, so a capture whose recording fails never loses the user's VM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from worker.config import Settings
from worker.hypervisors import naming
from worker.hypervisors.context import OperationContext
from worker.hypervisors.errors import ImageExistsError, InvalidInputError, PermanentError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout
from worker.hypervisors.lifecycle import remove_domain

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CaptureResult:
    new_image_name: str
    domain_name: str
    master_path: str
    master_size_bytes: int
    repository_path: str | None
    timings: Mapping[str, float]


def _refuse_existing(path: str | None, what: str) -> None:
    if path and os.path.exists(path):
        raise ImageExistsError(f"capture target {what} {path} already exists; refusing to overwrite it")


def _write_text_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    part = f"{path}.part"
    with open(part, "w") as fh:
        fh.write(text)
    os.replace(part, path)


def capture(ctx: OperationContext) -> CaptureResult:
    """Timings: ``shutdown``, ``copy_to_master``, ``copy_to_repository`` (with a repository), ``total``."""
    host, driver, layout, settings, progress = ctx.host, ctx.driver, ctx.layout, ctx.settings, ctx.progress
    watch = ctx.stopwatch
    new_name = naming.validate_name(layout.new_image_name, "new image name")
    macs = layout.computer_macs
    if not macs:
        raise InvalidInputError(
            f"computer {layout.reservation.computer_hostname!r} has no MAC address to find its domain by"
        )
    guest = host.guest_by_mac(macs)
    domain = guest.name
    master = layout.master_path(new_name)
    repo_file = layout.repository_file(new_name)
    _refuse_existing(master, "master")
    _refuse_existing(repo_file, "repository file")
    dom_xml = guest.xml(inactive=True)
    progress("capture", f"shutting down {domain}", 0.0)
    with watch.phase("shutdown"):
        guest.shutdown(settings.shutdown_timeout, settings.shutdown_retry_interval)
    disks = guest.disks()
    if not disks:
        raise PermanentError(f"domain {domain} has no disk to capture")
    if len(disks) > 1:
        log.warning("domain %s has %d disks; only %s is captured", domain, len(disks), disks[0].path)
    timeout = settings.qemu_img_convert_timeout
    with watch.phase("copy_to_master"), driver.image_lock(settings.lock_dir, new_name, timeout):
        _refuse_existing(master, "master")  # again: another capture may have won the lock first
        driver.copy_virtual_disk(
            disks[0].path,
            master,
            layout.datastore_imagetype,
            source_format=disks[0].format or layout.datastore_imagetype,
            progress=progress.copy("capture", f"capturing {domain}"),
            timeout=timeout,
            read_only=True,
        )
        _write_text_atomic(layout.master_xml_path(new_name), dom_xml)
    if repo_file:
        with watch.phase("copy_to_repository"):
            driver.copy_virtual_disk(
                master,
                repo_file,
                layout.reservation.vmprofile.repository_imagetype,
                source_format=layout.datastore_imagetype,
                compat="0.10",
                progress=progress.copy("capture", f"copying {new_name} to the repository"),
                timeout=timeout,
            )
            repo_xml = layout.repository_xml(new_name)
            if repo_xml:
                _write_text_atomic(repo_xml, dom_xml)
    timings = watch.total()
    progress("capture", f"captured {new_name}", 100.0)
    return CaptureResult(
        new_image_name=new_name,
        domain_name=domain,
        master_path=master,
        master_size_bytes=os.stat(master).st_size,
        repository_path=repo_file,
        timings=timings,
    )


def captured_master(layout: Layout, new_name: str) -> str | None:
    """The new revision's master when it already exists (an earlier delivery wrote it: masters
    appear only by atomic rename, so an existing one is complete), else None."""
    master = layout.master_path(naming.validate_name(new_name, "new image name"))
    return master if os.path.exists(master) else None


def remove_captured_domain(host: LibvirtHost, layout: Layout, settings: Settings, domain_name: str) -> bool:
    """image.pm's last step for the ``image`` state (libvirt.pm capture step 17): delete the captured
    domain and every disk of it. For ``checkpoint`` (or a domain already gone) nothing is deleted."""
    if layout.reservation.request_state != "image":
        return False
    guest = host.lookup_guest(domain_name)
    if guest is None:
        return False
    remove_domain(guest, image_state=True, roots=settings.roots)
    return True


__all__ = ["CaptureResult", "capture", "captured_master", "remove_captured_domain"]
