"""LibvirtProvisioner: the entry points of libvirt.pm that the tasks call, for one reservation.

The only input is a :class:`Reservation`; nothing here imports Celery or the DB layer. The work is
done by one module per responsibility: :mod:`.layout` (names, paths, validation), :mod:`.load`,
:mod:`.capture`, :mod:`.lifecycle` (deletion rules, node status); libvirt objects are
:class:`LibvirtHost` and :class:`Guest`; disks are the selected driver's.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from worker.config import Settings
from worker.hypervisors import capture as capture_module
from worker.hypervisors import load as load_module
from worker.hypervisors.boot_snapshot_files import remove_computer_snapshots
from worker.hypervisors.capture import CaptureResult
from worker.hypervisors.context import OperationContext
from worker.hypervisors.domain_spec import resolve_switch
from worker.hypervisors.drivers.base import Driver, select_driver
from worker.hypervisors.errors import InvalidInputError
from worker.hypervisors.guest import Guest
from worker.hypervisors.host import LibvirtHost, get_host
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin
from worker.hypervisors.layout import Layout
from worker.hypervisors.lifecycle import node_status, remove_computer_domains
from worker.hypervisors.load import LoadResult
from worker.hypervisors.node_status import NodeStatus
from worker.hypervisors.progress import Progress, ProgressCallback, ProgressEvent
from worker.reservation import Reservation

log = logging.getLogger(__name__)

# vcld checks the vmprofile's switches before the states that build a domain
_NETWORK_CHECK_STATES = re.compile(r"(new|reload|reinstall|test)")


class LibvirtProvisioner:
    """``settings`` are the caller's (the core never reads the process's); ``host`` defaults to the
    process's cached connection to ``settings.libvirt_uri``."""

    def __init__(
        self, reservation: Reservation, *, settings: Settings, host: LibvirtHost | None = None
    ) -> None:
        self.settings = settings
        # Validates every name, path (under the configured roots) and MAC before anything else.
        self.layout = Layout(reservation, roots=settings.roots)
        self.reservation = reservation
        self.host = host or get_host(settings.libvirt_uri)
        self._driver: Driver | None = None

    def initialize(self) -> None:
        """Select the driver (first probe that succeeds); check vmprofile switches for load states."""
        self._driver = select_driver(self.host)
        if _NETWORK_CHECK_STATES.search(self.reservation.request_state or ""):
            vp = self.reservation.vmprofile
            for n, switch in enumerate((vp.virtualswitch0, vp.virtualswitch1)):
                if switch:
                    resolve_switch(self.host, switch, f"vmprofile {vp.profile_name!r} virtualswitch{n}")

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            self.initialize()
        assert self._driver is not None
        return self._driver

    # ------------------------------------------------------------------ names
    def get_domain_name(self) -> str:
        """This revision's domain; in the image/checkpoint states the domain holding the computer's
        MAC, whatever revision it runs (that is the one to capture)."""
        if self.reservation.request_state in ("image", "checkpoint"):
            return self._active_guest().name
        return self.layout.domain_name

    def get_new_image_name(self) -> str:
        return self.layout.new_image_name

    def get_image_size(self, image_name: str | None = None) -> int:
        """MiB allocated by the image's master (or its repository files)."""
        return self.layout.image_size_bytes(image_name) // (1024 * 1024)

    # ------------------------------------------------------------------ domains
    def _active_guest(self) -> Guest:
        macs = self.layout.computer_macs
        if not macs:
            raise InvalidInputError(
                f"computer {self.reservation.computer_hostname!r} has no MAC address to find its domain by"
            )
        return self.host.guest_by_mac(macs)

    def guest(self) -> Guest:
        """The reservation's domain (see :meth:`get_domain_name`); DomainNotFoundError when absent."""
        if self.reservation.request_state in ("image", "checkpoint"):
            return self._active_guest()
        return self.host.require_guest(self.layout.domain_name)

    def node_status(self) -> NodeStatus:
        probe = self.settings.wait_for_guest and self.driver.boots_guests
        pin = HostKeyPin.for_reservation(self.settings, self.reservation, HostKeyMode.VERIFY)
        return node_status(
            self.host, self.layout, self.settings.qemu_img_info_timeout, probe_guest=probe, host_keys=pin
        )

    def post_maintenance_action(self) -> list[str]:
        """Delete this computer's domains, overlays and boot snapshots; the DB side (noimage,
        vmhostid NULL) is the task's. Returns the domains removed."""
        short = self.reservation.computer_short_name
        removed = remove_computer_domains(
            self.host, short, image_state=self.reservation.request_state == "image", roots=self.settings.roots
        )
        snapshots = remove_computer_snapshots(self.layout.vm_path, short, self.layout.datastore_imagetype)
        if snapshots:
            log.info("maintenance of %s removed its boot snapshots: %s", short, snapshots)
        return removed

    # ------------------------------------------------------------------ load / capture
    def _context(
        self, progress: ProgressCallback | None, settings: Settings | None = None
    ) -> OperationContext:
        """A fresh context (and stopwatch) per operation; ``settings`` replaces the provisioner's."""
        return OperationContext(
            self.host, self.driver, self.layout, settings or self.settings, Progress(progress)
        )

    def load(self, *, progress: ProgressCallback | None = None, post_load: bool = True) -> LoadResult:
        """Build and start the domain; when guests are waited for, the guest must answer on its
        connect port (its SSH host key pinned) and ``post_load`` runs the worker's post-load step
        (``VCL_POST_LOAD``). ``post_load=False`` is delegated mode: vcld's OS module runs
        ``post_load()`` itself after this returns, as libvirt.pm's load ends with it."""
        settings = self.settings if post_load else dataclasses.replace(self.settings, post_load="none")
        return load_module.load(self._context(progress, settings))

    def capture(self, *, progress: ProgressCallback | None = None) -> CaptureResult:
        """Shut down, flatten into the new master (and repository); the domain stays (see below)."""
        return capture_module.capture(self._context(progress))

    def captured_master(self, new_image_name: str) -> str | None:
        """The new revision's complete master if an earlier delivery already wrote it, else None."""
        return capture_module.captured_master(self.layout, new_image_name)

    def remove_captured_domain(self, domain_name: str) -> bool:
        """Delete the captured domain and its disks: call only once the new image is recorded."""
        return capture_module.remove_captured_domain(self.host, self.layout, self.settings, domain_name)


__all__ = [
    "CaptureResult",
    "LibvirtProvisioner",
    "LoadResult",
    "NodeStatus",
    "ProgressCallback",
    "ProgressEvent",
]
