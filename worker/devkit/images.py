"""Disk images for tests, benchmarks and the demo: masters, data patterns, checksums, ``qemu-img info``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path


def make_master(
    path: str | Path,
    size_mb: int = 64,
    pattern: int | None = None,
    mode: int = 0o644,
    *,
    data_mb: int = 1,
    source: str | Path | None = None,
) -> Path:
    """A standalone qcow2 master at ``path``, as VCL keeps them in a datastore or repository.

    With ``source`` it is a full copy of that image (any format qemu-img reads, e.g. a bootable
    guest); otherwise a blank disk of ``size_mb``. With ``pattern`` the first ``data_mb`` MiB are
    filled with that byte, so real clusters are allocated and copies can be checked. ``mode`` is set
    last: a datastore master is read-only (0444) once written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        cmd = ["qemu-img", "convert", "-q", "-U", "-O", "qcow2", str(source), str(path)]
    else:
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mb}M"]
    subprocess.run(cmd, check=True)
    if pattern is not None:
        write_pattern(path, pattern, length=f"{data_mb}M")
    os.chmod(path, mode)
    return path


def write_pattern(path: str | Path, pattern: int, offset: int | str = 0, length: str = "1M") -> None:
    """Write ``length`` bytes of ``pattern`` at ``offset`` into the qcow2 ``path`` (qemu-io)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def qemu_img_info(path: str | Path) -> dict[str, object]:
    """``qemu-img info`` as a dict; ``-U`` so an image in use by a running guest can be inspected."""
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout))
