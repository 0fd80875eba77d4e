"""Where a vmdk's data really lives (VCL images may be vmdk, e.g. from a VMware repository).

A vmdk descriptor is a text file naming its extents, and an extent may be any path: ``RW 8 FLAT
"/etc/shadow" 0`` makes qemu-img copy a host file into the new master. A vmdk is therefore accepted
only when every extent resolves inside the image's own directory. The descriptor is read by us first
(nothing outside the directory is opened), then qemu-img's own view of the extents is checked too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from worker.hypervisors.errors import ImageCorruptError
from worker.hypervisors.roots import is_under

# Binary sparse extents (hosted sparse "KDMV", ESX "COWD"): their data is in the file itself; an
# embedded descriptor names the file itself, which qemu opens as that single extent.
_SPARSE_MAGICS = (b"KDMV", b"COWD")
_DESCRIPTOR_MAX = 64 * 1024
# RW 4192256 SPARSE "name-s001.vmdk"   /   RDONLY 100 FLAT "name-flat.vmdk" 0
_EXTENT_RE = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"', re.MULTILINE)


def descriptor_extents(path: str) -> list[str]:
    """Extent file names of the vmdk ``path`` as its descriptor gives them ([] for a binary sparse
    file). A text file with no extent line is not a vmdk descriptor: refused."""
    with open(path, "rb") as fh:
        head = fh.read(_DESCRIPTOR_MAX)
    if head[:4] in _SPARSE_MAGICS:
        return []
    text = head.decode("utf-8", errors="replace")
    extents = _EXTENT_RE.findall(text)
    if not extents:
        raise ImageCorruptError(f"vmdk {path} is neither a sparse extent nor a descriptor with extents")
    return extents


def _check(path: str, names: Iterable[str], source: str) -> None:
    directory = os.path.dirname(os.path.realpath(path))
    for name in names:
        target = name if os.path.isabs(name) else os.path.join(directory, name)
        real = os.path.realpath(target)
        if not is_under(real, directory):
            raise ImageCorruptError(
                f"vmdk {path}: extent {name!r} ({source}) resolves to {real!r}, outside the image's "
                f"directory {directory}; refusing it"
            )


def check_descriptor(path: str) -> None:
    """Refuse ``path`` when its descriptor names an extent outside its directory (before qemu-img
    opens anything)."""
    _check(path, descriptor_extents(path), "descriptor")


def check_info_extents(path: str, info_raw: dict[str, Any]) -> None:
    """The same check on qemu-img info's ``format-specific`` extents (what qemu itself opened)."""
    data = (info_raw.get("format-specific") or {}).get("data") or {}
    names = [e.get("filename", "") for e in data.get("extents") or [] if isinstance(e, dict)]
    _check(path, [n for n in names if n], "qemu-img info")


__all__ = ["check_descriptor", "check_info_extents", "descriptor_extents"]
