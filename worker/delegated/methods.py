"""The provisioning interface vcld calls, as a table: method name, lock, default wait, result kind.

Imports nothing heavy: the CLI reads it on the management node to validate a method and pick how long
to wait for it without loading libvirt or the Celery tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum


class Returns(StrEnum):
    """What vcld expects back from a method."""

    BOOL = "bool"  # 1/0
    STATUS = "status"  # READY / POST_LOAD / RELOAD
    MB = "mb"  # an int
    POWER = "power"  # "on"/"off"/... or null when the domain does not exist


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    # Seconds the CLI waits by default (VCL_CALL_TIMEOUT_<NAME> overrides): a load may copy a master
    # from the repository first, a capture converts a whole disk (libvirt.pm allows 7200 s for that).
    timeout: int
    returns: Returns
    doc: str
    _: KW_ONLY
    # Changes the computer's domain or disks: runs under the per-computer lock.
    locked: bool = False


_BOOL, _STATUS, _MB, _POWER = Returns
METHODS: tuple[Method, ...] = (
    Method("initialize", 120, _BOOL, "host reachable, a driver works, vmprofile switches exist"),
    Method("node_status", 300, _STATUS, "READY / POST_LOAD / RELOAD (new.pm reload_image)"),
    Method("does_image_exist", 120, _BOOL, "master (or repository copy) of the image exists"),
    Method("retrieve_image", 120, _BOOL, "image available on the host (no partner-node copies)"),
    Method("load", 3600, _BOOL, "domain from the master, guest answering SSH; no post-load", locked=True),
    Method("capture", 7800, _BOOL, "shutdown if still on, new standalone master, image renamed", locked=True),
    Method("get_image_size", 120, _MB, "allocated MB of the image's master (image.size)"),
    Method("power_status", 120, _POWER, "on / off / suspended / crashed / null"),
    Method("power_on", 300, _BOOL, "start the reservation's domain", locked=True),
    Method("power_off", 300, _BOOL, "hard stop (virsh destroy)", locked=True),
    Method("power_reset", 300, _BOOL, "power_off then power_on", locked=True),
    Method("unload", 600, _BOOL, "delete the computer's domains and overlays", locked=True),
    Method("post_maintenance_action", 600, _BOOL, "unload; computer noimage, vmhostid NULL", locked=True),
)
BY_METHOD: dict[str, Method] = {m.name: m for m in METHODS}
TASK_NAME = "vcl.call"


def call_timeout(method: str, env: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for ``method``: ``VCL_CALL_TIMEOUT_<METHOD>``, else the table's default."""
    env = os.environ if env is None else env
    raw = env.get(f"VCL_CALL_TIMEOUT_{method.upper()}")
    if raw:
        value = float(raw)
        if value <= 0:
            raise ValueError(f"VCL_CALL_TIMEOUT_{method.upper()} must be > 0, got {raw!r}")
        return value
    return float(BY_METHOD[method].timeout)


__all__ = ["BY_METHOD", "METHODS", "TASK_NAME", "Method", "Returns", "call_timeout"]
