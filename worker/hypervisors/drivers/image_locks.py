"""Per-image file locks around master materialisation and capture.

A host's lock (``VCL_LOCK_DIR``) holds among that host's processes only. A master copied into a
datastore that several hosts share (the same ``datastorepath`` on NFS) also needs a lock every one of
them sees: the one in the datastore itself, :func:`datastore_lock`. Without it two hosts could copy the
same master at once, one removing the other's ``.part`` as stale.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import filelock

from worker.hypervisors.drivers.base import DiskOptions, MasterImage
from worker.hypervisors.errors import LockTimeoutError

# Locks of master copies into a datastore, inside it: they hold for every host sharing it.
DATASTORE_LOCK_DIR = ".locks"


@contextlib.contextmanager
def image_lock(lock_dir: str, image_name: str, timeout: float) -> Iterator[None]:
    """Cross-process per-image lock ``<lock_dir>/master-<image>.lock`` (filelock)."""
    os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    lock = filelock.FileLock(os.path.join(lock_dir, f"master-{image_name}.lock"), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise LockTimeoutError(f"could not lock master image {image_name!r} within {timeout:g} s") from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def datastore_lock(master: MasterImage, options: DiskOptions) -> Iterator[None]:
    """Per-image lock ``<datastore>/.locks/master-<image>.lock``, taken after the host's own: it holds
    for every host that mounts the datastore (only one lock when both are the same file: a second
    flock of one file by one process would wait for itself)."""
    lock_dir = os.path.join(master.datastore_path, DATASTORE_LOCK_DIR)
    if os.path.realpath(lock_dir) == os.path.realpath(options.lock_dir):
        yield
        return
    with image_lock(lock_dir, master.image_name, timeout=options.convert_timeout):
        yield
