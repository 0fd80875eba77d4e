"""Errors of the VCL database layer.

:class:`VclDataError` means the data in the VCL database cannot be worked with (a missing row, a
computer not provisioned by libvirt, a deleted image revision): retrying does not help, the
reservation has to fail. :class:`StateConflictError` means a guarded state UPDATE matched no row:
someone else (another worker, the web front end, an admin) changed the request first.
Every message names the offending ids/values.
"""

from __future__ import annotations


class VclDataError(Exception):
    """Bad or missing data in the VCL database (permanent)."""


class ReservationNotFoundError(VclDataError):
    """No ``reservation`` row with the given id."""


class NotLibvirtProvisionedError(VclDataError):
    """``computer.provisioningid -> provisioning.moduleid -> module.perlpackage`` is not libvirt."""


class NoVMHostError(VclDataError):
    """The computer has no ``vmhostid`` or the ``vmhost`` row / its host computer is missing."""


class NoVMProfileError(VclDataError):
    """The VM host's ``vmprofile`` (or one of its image types) is missing."""


class ImageRevisionError(VclDataError):
    """The reservation's image revision is missing, deleted, or belongs to another image."""


class StateConflictError(VclDataError):
    """A guarded ``UPDATE request ... WHERE stateid=... AND laststateid=...`` matched no row."""


__all__ = [
    "ImageRevisionError",
    "NoVMHostError",
    "NoVMProfileError",
    "NotLibvirtProvisionedError",
    "ReservationNotFoundError",
    "StateConflictError",
    "VclDataError",
]
