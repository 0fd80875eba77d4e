"""Provisioning core: Apache VCL's libvirt.pm + libvirt/KVM.pm on libvirt-python and qemu-img.

Imports nothing from Celery or ``worker.db``; the only input is a :class:`Reservation`.
"""

from __future__ import annotations

from worker.hypervisors.drivers import KVMDriver
from worker.hypervisors.errors import (
    AmbiguousDomainError,
    DatastoreFullError,
    DomainNotFoundError,
    ImageCorruptError,
    ImageExistsError,
    ImageNotFoundError,
    InvalidInputError,
    LibvirtPermanentError,
    LibvirtTransientError,
    LockTimeoutError,
    NoDriverError,
    PermanentError,
    ProvisioningError,
    QemuImgError,
    TransientError,
)
from worker.hypervisors.guest import Guest
from worker.hypervisors.host import LibvirtHost, get_host, map_libvirt_error
from worker.hypervisors.provisioner import (
    CaptureResult,
    LibvirtProvisioner,
    LoadResult,
    NodeStatus,
    ProgressCallback,
    ProgressEvent,
)
from worker.hypervisors.reservation import Reservation, VMProfile

__all__ = [
    "AmbiguousDomainError",
    "CaptureResult",
    "DatastoreFullError",
    "DomainNotFoundError",
    "Guest",
    "ImageCorruptError",
    "ImageExistsError",
    "ImageNotFoundError",
    "InvalidInputError",
    "KVMDriver",
    "LibvirtHost",
    "LibvirtPermanentError",
    "LibvirtProvisioner",
    "LibvirtTransientError",
    "LoadResult",
    "LockTimeoutError",
    "NoDriverError",
    "NodeStatus",
    "PermanentError",
    "ProgressCallback",
    "ProgressEvent",
    "ProvisioningError",
    "QemuImgError",
    "Reservation",
    "TransientError",
    "VMProfile",
    "get_host",
    "map_libvirt_error",
]
