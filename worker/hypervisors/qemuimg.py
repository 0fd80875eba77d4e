"""``qemu-img``, one function per verb, all through one runner (:func:`_run`).

* Argument lists only (no shell), a timeout on every call, qemu-img's own stderr in every error.
* ``-f`` is passed whenever the caller knows the format: qemu-img then never probes it (probing a
  file that claims to be raw but carries a qcow2 header is how a guest reads host files).
* ``info`` of a file from a repository runs under CPU-time and address-space limits
  (:data:`REPOSITORY_LIMITS`): a crafted header must not make qemu-img spin or allocate without end.
* JSON output is validated: a missing ``format`` or ``virtual-size`` or unparsable ``check`` output is
  an error, never a default.
* ``convert`` writes ``<dst>.part`` and renames it atomically; the partial file is removed on failure.
* Image locking stays on: no verb passes ``-U`` (force-share) unless its caller asks for it
  (``force_share=True``). A disk a running guest writes cannot then be read half-written: qemu-img
  fails with "Failed to get shared write lock" instead of copying an inconsistent image.
* Files qemu-img creates (overlays, ``.part`` copies) are created by us first with mode 0600, so a
  user's disk is never world-readable, not even while it is being written.
* qemu-img dies with the worker: its parent-death signal is SIGKILL (util-linux ``setpriv
  --pdeathsig KILL`` as argv prefix, else ``prctl(PR_SET_PDEATHSIG)`` in the child before exec), so
  a worker child killed by its hard time limit or ``kill -9`` leaves no copy running; an exception
  in the waiting thread (Celery's soft time limit among them) kills it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.hypervisors.child_process import chain_hooks, die_with_parent_argv
from worker.hypervisors.errors import DatastoreFullError, PermanentError, QemuImgError

QEMU_IMG = "qemu-img"
_PROGRESS_RE = re.compile(rb"\(\s*(\d+(?:\.\d+)?)/100%\)")
_COMPAT_REJECTED_RE = re.compile(r"(Unknown option.*compat|Invalid parameter.*compat)", re.IGNORECASE)
# File extensions that name a qemu-img format; anything else (".img", ".disk") is probed, under limits.
_FORMAT_EXTENSIONS = {"qcow2", "qcow", "raw", "vmdk", "vdi", "vhdx", "vpc", "qed"}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one qemu-img process (the values OpenStack uses for untrusted images)."""

    cpu_seconds: int = 30
    address_space_bytes: int = 1 << 30


REPOSITORY_LIMITS = Limits()


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    backing_filename: str | None
    full_backing_filename: str | None
    backing_format: str | None
    data_file: str | None
    cluster_size: int | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    ok: bool
    corruptions: int
    leaks: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class _Completed:
    rc: int
    stdout: str
    stderr: str


def available() -> bool:
    return shutil.which(QEMU_IMG) is not None


def format_from_extension(path: str) -> str | None:
    """The qemu-img format a file's extension names, or None when the extension names none."""
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    return ext if ext in _FORMAT_EXTENSIONS else None


def _limited_argv(limits: Limits | None) -> tuple[list[str], Callable[[], None] | None]:
    """util-linux ``prlimit`` as argv prefix; setrlimit in the child only when prlimit is missing
    (a preexec_fn is unsafe in a threaded process, and the worker runs threads)."""
    if limits is None:
        return [], None
    prlimit = shutil.which("prlimit")
    if prlimit is not None:
        return [prlimit, f"--cpu={limits.cpu_seconds}", f"--as={limits.address_space_bytes}", "--"], None

    def _set_limits() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (limits.address_space_bytes, limits.address_space_bytes))

    return [], _set_limits


def _run(
    args: Sequence[str],
    timeout: float,
    *,
    progress: Callable[[float], None] | None = None,
    limits: Limits | None = None,
) -> _Completed:
    """Run ``qemu-img <args>``: stdout collected (and scanned for ``-p`` progress), stderr kept.

    A timeout kills the process and raises; a non-zero exit is returned for the verb to interpret.
    """
    prefix, preexec = _limited_argv(limits)
    death_prefix, death_hook = die_with_parent_argv()
    cmd = [*death_prefix, *prefix, QEMU_IMG, *args]
    preexec = chain_hooks(death_hook, preexec)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=preexec
        )
    except FileNotFoundError as exc:
        raise QemuImgError(f"{QEMU_IMG} is not installed") from exc
    assert proc.stdout is not None and proc.stderr is not None
    err_chunks: list[bytes] = []
    err_stream = proc.stderr
    reader = threading.Thread(target=lambda: err_chunks.append(err_stream.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    timer = threading.Timer(timeout, _kill)
    timer.start()
    out = bytearray()
    last, pending = -1.0, b""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            out += chunk
            if progress is None:
                continue
            # -p redraws "(nn.nn/100%)" with carriage returns; report each new value once
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                m = _PROGRESS_RE.search(line)
                if m and float(m.group(1)) != last:
                    last = float(m.group(1))
                    progress(last)
        rc = proc.wait()
    except BaseException:
        _kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        reader.join(5)
        proc.stdout.close()
        err_stream.close()
    stderr = b"".join(err_chunks).decode(errors="replace")
    if timed_out.is_set():
        raise QemuImgError(
            f"qemu-img {' '.join(args)} timed out after {timeout:g} s: {stderr.strip()}", stderr=stderr
        )
    return _Completed(rc, out.decode(errors="replace"), stderr)


def _fail(args: Sequence[str], done: _Completed) -> PermanentError:
    msg = done.stderr.strip() or "(no output)"
    if "No space left on device" in msg:
        return DatastoreFullError(f"qemu-img {' '.join(args)} failed: {msg}")
    return QemuImgError(
        f"qemu-img {' '.join(args)} failed (exit {done.rc}): {msg}", rc=done.rc, stderr=done.stderr
    )


def _json_object(args: Sequence[str], text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QemuImgError(f"qemu-img {' '.join(args)}: unparsable output {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise QemuImgError(f"qemu-img {' '.join(args)}: expected a JSON object, got {text[:200]!r}")
    return data


def _fmt(flag: str, fmt: str | None) -> list[str]:
    return [flag, fmt] if fmt else []


def _share(*, force_share: bool) -> list[str]:
    return ["-U"] if force_share else []


def _precreate(path: str, mode: int = 0o600) -> None:
    """An empty ``path`` with ``mode`` (O_EXCL: never an existing file); qemu-img truncates and
    writes it but keeps its mode, whatever the umask."""
    _remove_quietly(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode))
    os.chmod(path, mode)  # the umask may have cleared bits of ``mode``


def _finish_file(path: str, mode: int, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    os.chmod(path, mode)


def info(
    path: str,
    fmt: str | None = None,
    *,
    timeout: float = 60,
    limits: Limits | None = None,
    force_share: bool = False,
) -> ImageInfo:
    """``qemu-img info --output=json [-U] [-f fmt] <path>``.

    Without ``force_share`` the image's lock is respected: a disk a running guest writes is refused
    ("Failed to get shared write lock"); masters (only ever opened read-only) are read as usual."""
    if not os.path.exists(path):
        raise QemuImgError(f"qemu-img info: {path} does not exist")
    args = ["info", "--output=json", *_share(force_share=force_share), *_fmt("-f", fmt), path]
    done = _run(args, timeout, limits=limits)
    if done.rc != 0:
        raise _fail(args, done)
    data = _json_object(args, done.stdout)
    found_format, virtual_size = data.get("format"), data.get("virtual-size")
    if not isinstance(found_format, str) or not found_format:
        raise QemuImgError(f"qemu-img info {path}: no 'format' in {done.stdout[:200]!r}")
    if not isinstance(virtual_size, int):
        raise QemuImgError(f"qemu-img info {path}: no 'virtual-size' in {done.stdout[:200]!r}")
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        filename=str(data.get("filename", path)),
        format=found_format,
        virtual_size=virtual_size,
        actual_size=data.get("actual-size"),
        backing_filename=data.get("backing-filename"),
        full_backing_filename=data.get("full-backing-filename"),
        backing_format=data.get("backing-filename-format"),
        data_file=specific.get("data-file"),
        cluster_size=data.get("cluster-size"),
        raw=data,
    )


def create_overlay(
    backing: str,
    overlay: str,
    backing_format: str,
    fmt: str = "qcow2",
    timeout: float = 60,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """``qemu-img create -f <fmt> -F <backing fmt> -b <abs backing> <overlay>``; no half file on failure.

    ``-F`` is required since QEMU 6.1 and keeps the backing file from ever being probed. The overlay
    holds the user's data: created 0600 (``mode``), then given to ``owner`` (uid, gid) when set.
    """
    args = ["create", "-q", "-f", fmt, "-F", backing_format, "-b", os.path.abspath(backing), overlay]
    try:
        _precreate(overlay)
        done = _run(args, timeout)
        if done.rc != 0:
            raise _fail(args, done)
        _finish_file(overlay, mode, owner)
    except BaseException:
        _remove_quietly(overlay)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def convert(
    sources: str | Sequence[str],
    dst: str,
    out_fmt: str,
    *,
    src_fmt: str | None = None,
    compat: str | None = None,
    progress: Callable[[float], None] | None = None,
    timeout: float = 7200,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    force_share: bool = False,
) -> None:
    """``qemu-img convert -p [-U] [-f src] <srcs> -O <fmt> [-o compat=…] <dst>.part``, renamed to ``dst``.

    When ``compat`` is rejected by qemu-img the copy is retried once without it (VCL-911). On any
    failure the ``.part`` file is removed and ``dst`` is untouched. The ``.part`` file is 0600 while
    it is written; ``mode`` (and ``owner``) are applied before the rename.
    """
    srcs = [sources] if isinstance(sources, str) else list(sources)
    part = f"{dst}.part"
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or ".", exist_ok=True)
    base = ["convert", "-p", *_share(force_share=force_share), *_fmt("-f", src_fmt), *srcs, "-O", out_fmt]
    try:
        _precreate(part)
        args = [*base, "-o", f"compat={compat}", part] if compat else [*base, part]
        done = _run(args, timeout, progress=progress)
        if done.rc != 0 and compat and _COMPAT_REJECTED_RE.search(done.stderr):
            _precreate(part)
            args = [*base, part]
            done = _run(args, timeout, progress=progress)
        if done.rc != 0:
            raise _fail(args, done)
        _finish_file(part, mode, owner)
        os.replace(part, dst)
    except BaseException:
        _remove_quietly(part)
        raise


def compare(
    a: str,
    b: str,
    fmt_a: str | None = None,
    fmt_b: str | None = None,
    timeout: float = 600,
    *,
    force_share: bool = False,
) -> bool:
    """``qemu-img compare [-U] [-f] [-F] a b``: True when the guest-visible contents are identical."""
    args = ["compare", *_share(force_share=force_share), *_fmt("-f", fmt_a), *_fmt("-F", fmt_b), a, b]
    done = _run(args, timeout)
    if done.rc in (0, 1):
        return done.rc == 0
    raise _fail(args, done)


def check(
    path: str, fmt: str | None = None, timeout: float = 600, *, force_share: bool = False
) -> CheckResult:
    """``qemu-img check --output=json``: exit 0 clean, 2 corruptions, 3 leaks only; else an error."""
    args = ["check", "--output=json", *_share(force_share=force_share), *_fmt("-f", fmt), path]
    done = _run(args, timeout)
    if done.rc not in (0, 2, 3):
        raise _fail(args, done)
    data = _json_object(args, done.stdout)
    if "check-errors" not in data:  # mandatory in qemu's ImageCheck: without it this is not a report
        raise QemuImgError(f"qemu-img {' '.join(args)}: no 'check-errors' in {done.stdout[:200]!r}")
    try:
        corruptions, leaks = int(data.get("corruptions", 0)), int(data.get("leaks", 0))
    except (TypeError, ValueError) as exc:
        raise QemuImgError(f"qemu-img {' '.join(args)}: unparsable counts in {data!r}") from exc
    return CheckResult(ok=done.rc == 0, corruptions=corruptions, leaks=leaks, raw=data)


__all__ = [
    "REPOSITORY_LIMITS",
    "CheckResult",
    "ImageInfo",
    "Limits",
    "available",
    "check",
    "compare",
    "convert",
    "create_overlay",
    "format_from_extension",
    "info",
]
