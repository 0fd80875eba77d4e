"""Typed errors of the provisioning core.

Celery tasks retry :class:`TransientError` (with backoff) and fail the reservation on
:class:`PermanentError`. Every libvirt error is mapped into this hierarchy in one place
(``worker.hypervisors.host.map_libvirt_error``); qemu-img failures become :class:`QemuImgError`.
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base of every error raised by the provisioning core."""


class TransientError(ProvisioningError):
    """Worth retrying: the libvirt connection dropped, libvirtd restarted, a lock was busy."""


class PermanentError(ProvisioningError):
    """Retrying cannot help: bad input, a missing or corrupt image, a refused definition."""


class InvalidInputError(PermanentError):
    """A value from the reservation (name, path, MAC, vmprofile setting) failed validation."""


class ImageNotFoundError(PermanentError):
    """No master in the datastore and none in the repository."""


class ImageCorruptError(PermanentError):
    """A master or repository file that qemu-img cannot read, or one that is unsafe (own backing file)."""


class ImageExistsError(PermanentError):
    """Capture target (master or repository file) already exists; a revision is never overwritten."""


class MalformedXmlError(PermanentError):
    """XML from libvirt or a saved master XML that does not parse."""


class DomainNotFoundError(PermanentError):
    """The libvirt domain asked for does not exist."""


class LibvirtTransientError(TransientError):
    """libvirt connection/RPC failure; the connection is reopened on the next call."""


class LibvirtPermanentError(PermanentError):
    """libvirt refused the operation (invalid XML, unsupported configuration, ...)."""


class QemuImgError(PermanentError):
    """qemu-img exited non-zero, timed out or printed what it should not; the message carries its stderr.

    ``rc`` is None when qemu-img did not exit by itself (timeout, not installed, bad output).
    """

    def __init__(self, message: str, *, rc: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.stderr = stderr


class DatastoreFullError(PermanentError):
    """Not enough free space for the copy or overlay; partial files were removed."""


class NoDriverError(PermanentError):
    """No hypervisor driver's probe succeeded on this host."""


class AmbiguousDomainError(PermanentError):
    """More than one domain matches the computer's MAC addresses (capture needs exactly one)."""


class LockTimeoutError(TransientError):
    """A per-image file lock could not be obtained in time (another process is copying the image)."""


class ConfigurationError(PermanentError):
    """The site's configuration cannot work (a missing key file, an unreadable master, a missing
    network): the load fails at once, and the message names the setting or the row to fix."""


class KeyFileError(ConfigurationError):
    """A ``managementnode.keys`` file that does not exist or cannot be read."""


class UnreadableMasterError(ConfigurationError):
    """The image's master exists in the datastore but cannot be read."""


class NetworkNotFoundError(InvalidInputError, ConfigurationError):
    """A vmprofile ``virtualswitch`` names neither a libvirt network nor a host bridge."""


class HostKeyMismatchError(PermanentError):
    """The guest at the computer's address presented an SSH host key other than the one pinned for
    that computer: it is not the guest this worker booted, and nothing is handed out."""
