"""Driver protocol, the values drivers take and return, and the registry that picks a driver.

A driver never sees the provisioner: it is given what it needs (:class:`MasterImage`, paths,
:class:`DiskOptions`) and returns what it did (:class:`PreparedDisk`). The first registered driver
whose probe succeeds wins (libvirt.pm:initialize).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from worker.hypervisors import naming
from worker.hypervisors.errors import NoDriverError, TransientError

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost

log = logging.getLogger(__name__)

CopyProgress = Callable[[float], None]


@dataclass(frozen=True, kw_only=True)
class MasterImage:
    """One image revision's master in the datastore, and the repository a missing one is copied from."""

    image_name: str
    datastore_path: str
    datastore_imagetype: str
    repository_path: str | None
    windows: bool = False

    def path(self) -> str:
        """Looked up again on every call: another process may have just copied it."""
        return naming.master_image_file_path(self.datastore_path, self.image_name, self.datastore_imagetype)

    def repository_files(self) -> list[str]:
        return naming.find_repository_image_file_paths(self.repository_path, self.image_name)


@dataclass(frozen=True)
class DiskOptions:
    lock_dir: str  # per-image file locks around master materialisation and capture
    info_timeout: float
    convert_timeout: float


@dataclass(frozen=True, kw_only=True)
class PreparedDisk:
    """What :meth:`Driver.prepare_disk` made: the domain's disk and the master it is backed by."""

    master_path: str
    cow_path: str
    master_copied: bool  # True when this call copied the master from the repository


class Driver(Protocol):
    name: str
    # Whether domains of this driver run a real guest OS that can answer on the network.
    boots_guests: bool

    def probe(self, host: LibvirtHost) -> bool: ...

    def get_domain_type(self, host: LibvirtHost, override: str = "") -> str: ...

    def get_disk_driver_name(self) -> str: ...

    def prepare_disk(
        self, master: MasterImage, cow_path: str, options: DiskOptions, on_copy: CopyProgress | None = None
    ) -> PreparedDisk: ...

    def image_lock(
        self, lock_dir: str, image_name: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]: ...

    def copy_virtual_disk(
        self,
        sources: str | Sequence[str],
        dst: str,
        fmt: str,
        *,
        source_format: str | None = None,
        progress: CopyProgress | None = None,
        compat: str | None = None,
        timeout: float = 7200,
        read_only: bool = False,
    ) -> None: ...


DriverFactory = Callable[[], Driver]
_REGISTRY: list[tuple[str, DriverFactory]] = []


def register_driver(name: str, factory: DriverFactory) -> None:
    if all(n != name for n, _ in _REGISTRY):
        _REGISTRY.append((name, factory))
        _REGISTRY.sort(key=lambda item: item[0].lower())  # VCL sorts driver files case-insensitively


def select_driver(host: LibvirtHost) -> Driver:
    tried = []
    for name, factory in _REGISTRY:
        try:
            driver = factory()
            if driver.probe(host):
                log.info("libvirt driver %s selected for %s", name, host.uri)
                return driver
            tried.append(f"{name}: probe failed")
        except TransientError:
            raise  # libvirtd unreachable (e.g. restarting): retry the task, do not fail it
        except Exception as exc:  # a broken driver must not hide the others
            tried.append(f"{name}: {exc}")
            log.warning("driver %s failed to initialise: %s", name, exc)
    raise NoDriverError(
        f"no libvirt driver could be initialised for {host.uri} ({'; '.join(tried) or 'none registered'})"
    )
