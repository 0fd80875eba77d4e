"""VCL's node_status verdict, in a module of its own: :mod:`.guest_access` (the guest's answer) and
:mod:`.lifecycle` (the domain and its disks) both produce it, and neither imports the other for it."""

from __future__ import annotations

from enum import Enum


class NodeStatus(str, Enum):  # noqa: UP042 (API fixed as str+Enum: callers read ``.value``)
    READY = "READY"
    POST_LOAD = "POST_LOAD"
    RELOAD = "RELOAD"


__all__ = ["NodeStatus"]
