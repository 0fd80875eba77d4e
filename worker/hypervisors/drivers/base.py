"""Driver protocol and registry: the first driver whose probe succeeds wins (libvirt.pm:initialize)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from worker.hypervisors.errors import NoDriverError, TransientError

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost
    from worker.hypervisors.provisioner import LibvirtProvisioner

log = logging.getLogger(__name__)


class Driver(Protocol):
    name: str

    def probe(self, host: LibvirtHost) -> bool: ...

    def get_domain_type(self, host: LibvirtHost) -> str: ...

    def get_disk_driver_name(self) -> str: ...

    def extend_domain_xml(self, prov: LibvirtProvisioner, xml: str) -> str: ...

    def pre_define(self, prov: LibvirtProvisioner) -> bool: ...

    def image_lock(
        self, prov: LibvirtProvisioner, image_name: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]: ...

    def copy_virtual_disk(
        self,
        sources: str | Sequence[str],
        dst: str,
        fmt: str,
        *,
        progress: Callable[[float], None] | None = None,
        compat: str | None = None,
        timeout: float = 7200,
        mode: int | None = None,
    ) -> None: ...


DriverFactory = Callable[[], Driver]
_REGISTRY: list[tuple[str, DriverFactory]] = []


def register_driver(name: str, factory: DriverFactory) -> None:
    if all(n != name for n, _ in _REGISTRY):
        _REGISTRY.append((name, factory))
        _REGISTRY.sort(key=lambda item: item[0].lower())  # VCL sorts driver files case-insensitively


def registered_drivers() -> list[str]:
    return [n for n, _ in _REGISTRY]


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
