"""The provisioning interface vcld calls, as a table: method name, lock, default wait, result kind.

Imports nothing heavy: the CLI reads it on the management node to validate a method and pick how long
to wait for it without loading libvirt or the Celery tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    # Changes the computer's domain or disks: runs under the per-computer lock.
    locked: bool
    # Seconds the CLI waits by default (VCL_CALL_TIMEOUT_<NAME> overrides): a load may copy a master
    # from the repository first, a capture converts a whole disk (libvirt.pm allows 7200 s for that).
    timeout: int
    # What vcld expects back: "bool" (1/0), "status" (READY/POST_LOAD/RELOAD), "mb" (int), "power"
    # ("on"/"off"/... or null when the domain does not exist).
    returns: str
    doc: str


METHODS: tuple[Method, ...] = (
    Method("initialize", False, 120, "bool", "host reachable, a driver works, vmprofile switches exist"),
    Method("node_status", False, 300, "status", "READY / POST_LOAD / RELOAD (new.pm reload_image)"),
    Method("does_image_exist", False, 120, "bool", "master (or repository copy) of the image exists"),
    Method("retrieve_image", False, 120, "bool", "image available on the host (no partner-node copies)"),
    Method("load", True, 3600, "bool", "libvirt.pm load: domain from the master, guest answering"),
    Method("capture", True, 7800, "bool", "libvirt.pm capture: new standalone master, image renamed"),
    Method("get_image_size", False, 120, "mb", "allocated MB of the image's master (image.size)"),
    Method("power_status", False, 120, "power", "on / off / suspended / crashed / null"),
    Method("power_on", True, 300, "bool", "start the reservation's domain"),
    Method("power_off", True, 300, "bool", "hard stop (virsh destroy)"),
    Method("power_reset", True, 300, "bool", "power_off then power_on"),
    Method("unload", True, 600, "bool", "delete the computer's domains and overlays"),
    Method("post_maintenance_action", True, 600, "bool", "unload; computer noimage, vmhostid NULL"),
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


__all__ = ["BY_METHOD", "METHODS", "TASK_NAME", "Method", "call_timeout"]
