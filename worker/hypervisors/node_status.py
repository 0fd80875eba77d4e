"""VCL's node_status verdict, in a module of its own: :mod:`.guest_access` (the guest's answer) and
:mod:`.lifecycle` (the domain and its disks) both produce it, and neither imports the other for it."""

from __future__ import annotations

from enum import Enum


class NodeStatus(str, Enum):  # noqa: UP042 (API fixed as str+Enum: callers read ``.value``)
    """The strings of VCL's ``Provisioning.pm:node_status`` (libvirt.pm has none of its own), which
    new.pm's ``reload_image`` acts on:

    * ``READY``: the computer runs this revision and post-load is recorded: no load.
    * ``POST_LOAD``: the guest answers SSH with this revision but its post-load is not recorded:
      vcld runs the OS module's ``post_load()`` on it (which waits up to 600 s for SSH first), no load.
    * ``RELOAD``: anything else, including a domain that is off and a guest that does not answer or
      cannot be logged in to (VCL: "not responding to SSH, returning 'RELOAD'"): vcld calls ``load``.
    """

    READY = "READY"
    POST_LOAD = "POST_LOAD"
    RELOAD = "RELOAD"


__all__ = ["NodeStatus"]
