"""``qemu-img``, one function per verb. Argument lists only (no shell), timeouts, stderr in errors.

* ``info`` uses ``--output=json`` and ``-U`` (force-share, so it works on a running domain's disk).
* ``create_overlay`` always passes ``-F`` (required since QEMU 6.1).
* ``convert`` writes ``<dst>.part`` and renames it atomically; the partial file is removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.hypervisors.errors import DatastoreFullError, ImageCorruptError, PermanentError, QemuImgError

QEMU_IMG = "qemu-img"
_PROGRESS_RE = re.compile(rb"\(\s*(\d+(?:\.\d+)?)/100%\)")
_COMPAT_REJECTED_RE = re.compile(r"(Unknown option.*compat|Invalid parameter.*compat)", re.IGNORECASE)


@dataclass(frozen=True)
class ImageInfo:
    filename: str
    format: str
    virtual_size: int
    actual_size: int
    backing_filename: str | None
    full_backing_filename: str | None
    backing_format: str | None
    data_file: str | None
    cluster_size: int | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    corruptions: int
    leaks: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def available() -> bool:
    return shutil.which(QEMU_IMG) is not None


def _run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [QEMU_IMG, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise QemuImgError(f"{' '.join(cmd)} timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise QemuImgError(f"{QEMU_IMG} is not installed") from exc


def _fail(args: Sequence[str], rc: int, stderr: str) -> PermanentError:
    msg = stderr.strip() or "(no output)"
    if "No space left on device" in msg:
        return DatastoreFullError(f"qemu-img {' '.join(args)} failed: {msg}")
    return QemuImgError(f"qemu-img {' '.join(args)} failed (exit {rc}): {msg}")


def info(path: str, timeout: float = 60) -> ImageInfo:
    """``qemu-img info --output=json -U <path>`` as an :class:`ImageInfo`."""
    if not os.path.exists(path):
        raise QemuImgError(f"qemu-img info: {path} does not exist")
    args = ["info", "--output=json", "-U", path]
    proc = _run(args, timeout)
    if proc.returncode != 0:
        raise ImageCorruptError(f"qemu-img cannot read {path}: {proc.stderr.strip()}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise QemuImgError(f"qemu-img info {path}: unparsable output {proc.stdout[:200]!r}") from exc
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        filename=str(data.get("filename", path)),
        format=str(data.get("format", "")),
        virtual_size=int(data.get("virtual-size", 0)),
        actual_size=int(data.get("actual-size", 0)),
        backing_filename=data.get("backing-filename"),
        full_backing_filename=data.get("full-backing-filename"),
        backing_format=data.get("backing-filename-format"),
        data_file=specific.get("data-file"),
        cluster_size=data.get("cluster-size"),
        raw=data,
    )


def create_overlay(
    backing: str, overlay: str, backing_format: str, fmt: str = "qcow2", timeout: float = 60
) -> None:
    """``qemu-img create -f <fmt> -F <backing fmt> -b <abs backing> <overlay>``; no half file on failure."""
    backing = os.path.abspath(backing)
    args = ["create", "-q", "-f", fmt, "-F", backing_format, "-b", backing, overlay]
    try:
        proc = _run(args, timeout)
    except BaseException:
        _remove_quietly(overlay)
        raise
    if proc.returncode != 0:
        _remove_quietly(overlay)
        raise _fail(args, proc.returncode, proc.stderr)


def create(path: str, size_bytes: int, fmt: str = "qcow2", timeout: float = 60) -> None:
    """``qemu-img create -f <fmt> <path> <size>`` (blank image)."""
    args = ["create", "-q", "-f", fmt, path, str(size_bytes)]
    proc = _run(args, timeout)
    if proc.returncode != 0:
        _remove_quietly(path)
        raise _fail(args, proc.returncode, proc.stderr)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _convert_once(
    args: list[str], timeout: float, progress: Callable[[float], None] | None
) -> tuple[int, str]:
    """Run ``qemu-img <args>`` streaming stdout for ``-p`` progress; returns (rc, stderr)."""
    proc = subprocess.Popen(
        [QEMU_IMG, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_chunks: list[bytes] = []
    err_stream = proc.stderr
    reader = threading.Thread(target=lambda: stderr_chunks.append(err_stream.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    timer = threading.Timer(timeout, _kill)
    timer.start()
    last = -1.0
    buf = b""
    try:
        while True:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for part in parts:
                m = _PROGRESS_RE.search(part)
                if m and progress is not None:
                    pct = float(m.group(1))
                    if pct != last:
                        last = pct
                        progress(pct)
        rc = proc.wait()
    except BaseException:
        _kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        reader.join(5)
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    if timed_out.is_set():
        raise QemuImgError(f"qemu-img {' '.join(args)} timed out after {timeout:g} s: {stderr.strip()}")
    return rc, stderr


def convert(
    sources: str | Sequence[str],
    dst: str,
    out_fmt: str,
    *,
    compat: str | None = None,
    progress: Callable[[float], None] | None = None,
    timeout: float = 7200,
    mode: int | None = None,
) -> None:
    """``qemu-img convert -p <srcs> -O <fmt> [-o compat=<compat>] <dst>.part`` then rename to ``dst``.

    When ``compat`` is rejected by qemu-img the copy is retried once without it (VCL-911). On any
    failure the ``.part`` file is removed and ``dst`` is untouched. ``mode`` is applied before rename.
    """
    srcs = [sources] if isinstance(sources, str) else list(sources)
    part = f"{dst}.part"
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or ".", exist_ok=True)
    base = ["convert", "-p", "-U", *srcs, "-O", out_fmt]
    try:
        _remove_quietly(part)
        args = [*base, "-o", f"compat={compat}", part] if compat else [*base, part]
        rc, stderr = _convert_once(args, timeout, progress)
        if rc != 0 and compat and _COMPAT_REJECTED_RE.search(stderr):
            _remove_quietly(part)
            args = [*base, part]
            rc, stderr = _convert_once(args, timeout, progress)
        if rc != 0:
            raise _fail(args, rc, stderr)
        if mode is not None:
            os.chmod(part, mode)
        os.replace(part, dst)
    except BaseException:
        _remove_quietly(part)
        raise


def compare(a: str, b: str, timeout: float = 600) -> bool:
    """``qemu-img compare -U a b``: True when the guest-visible contents are identical."""
    args = ["compare", "-U", a, b]
    proc = _run(args, timeout)
    if proc.returncode == 0:
        return True
    if proc.returncode == 1:
        return False
    raise _fail(args, proc.returncode, proc.stderr)


def check(path: str, timeout: float = 600) -> CheckResult:
    """``qemu-img check --output=json``: exit 0 clean, 2 corruptions, 3 leaks only."""
    args = ["check", "--output=json", "-U", path]
    proc = _run(args, timeout)
    if proc.returncode not in (0, 2, 3):
        raise _fail(args, proc.returncode, proc.stderr)
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        data = {}
    corruptions = int(data.get("corruptions", 0))
    leaks = int(data.get("leaks", 0))
    return CheckResult(ok=proc.returncode == 0, corruptions=corruptions, leaks=leaks, raw=data)


__all__ = [
    "CheckResult",
    "ImageInfo",
    "available",
    "check",
    "compare",
    "convert",
    "create",
    "create_overlay",
    "info",
]
