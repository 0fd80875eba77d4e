"""A small bootable Linux guest built offline from Debian packages, cached by a hash of its inputs.

``ensure_guest_image()`` gives a qcow2 (~14 MiB, 128 MiB virtual) that boots by itself like a VCL
image (MBR + GRUB + kernel + initramfs), takes its address by DHCP on every NIC, runs dropbear
(root login with the key built alongside it only) and powers off on the ACPI power button.

The cache key is a SHA256 of the package names, versions and archive hashes (from apt's lists, no
download), the builder's own source files and its parameters; a hit costs a few file reads. A file
lock makes concurrent test processes build once; the result is published with an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from worker.devkit import guest_debs, guest_disk, guest_rootfs
from worker.devkit.guest_debs import GuestBuildError, PackageRef

__all__ = [
    "GuestBuildError",
    "GuestImage",
    "build_cached",
    "default_cache_dir",
    "ensure_guest_image",
    "load_image",
    "make_key",
    "write_meta",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("/var/cache/vcl-worker/guest")
PACKAGES = ("linux-image-amd64", "busybox-static", "dropbear-bin")
# Storage for virtio/IDE/SATA/SCSI disks, the NICs libvirt offers, ext4 (its checksum driver is
# loaded through the crypto API, not a module dependency) and the power button's input device.
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "ata_piix", "ahci", "sd_mod",
    "crc32c_generic", "ext4", "e1000", "e1000e", "8139cp", "8139too", "button", "evdev",
)  # fmt: skip
DISK_MIB = 128
LABEL = "vclroot"
QCOW2_NAME = "guest.qcow2"
KEY_NAME = "id_ed25519"
META_NAME = "meta.json"
KEEP_IMAGES = 3  # older builds may still back a running test's overlay for a while


@dataclass(frozen=True)
class GuestImage:
    path: Path  # the qcow2; use it as a read-only backing file
    private_key: Path  # OpenSSH ed25519 key that logs in as root
    public_key: str
    content_hash: str  # SHA256 of the qcow2 file
    inputs_hash: str  # the cache key
    build_seconds: float  # how long the build that produced it took
    cached: bool  # True when this call found it built already
    kernel_version: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("VCL_GUEST_CACHE") or DEFAULT_CACHE_DIR)


def _source_hash() -> str:
    """Any edit to the builder changes the image, so its sources are part of the key."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("guest_*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _inputs_hash(refs: list[PackageRef]) -> str:
    material = {
        "source": _source_hash(),
        "params": {"modules": MODULES, "disk_mib": DISK_MIB, "label": LABEL},
        "packages": [[r.name, r.version, r.sha256] for r in refs],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def load_image(final: Path, *, cached: bool) -> GuestImage:
    """The published build in ``final`` (its qcow2, key and ``meta.json``)."""
    meta = json.loads((final / META_NAME).read_text())
    return GuestImage(
        path=final / QCOW2_NAME,
        private_key=final / KEY_NAME,
        public_key=(final / f"{KEY_NAME}.pub").read_text().strip(),
        content_hash=meta["content_hash"],
        inputs_hash=meta["inputs_hash"],
        build_seconds=float(meta["build_seconds"]),
        cached=cached,
        kernel_version=meta["kernel_version"],
    )


def _mkdir(path: Path) -> None:
    # libvirt-qemu must be able to traverse to the image when a domain uses it in place.
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 (read-only for others, on purpose)


def ensure_guest_image(cache_dir: Path | str | None = None) -> GuestImage:
    """The cached guest image for the current inputs, building it first when absent."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _mkdir(cache)
    refs = guest_debs.resolve_cached(PACKAGES, cache / "resolved.json")
    key = _inputs_hash(refs)
    return build_cached(cache, key, lambda work, out: _build(refs, cache / "debs", work, out, key))


def build_cached(cache: Path, key: str, build: Callable[[Path, Path], None]) -> GuestImage:
    """The build ``key`` under ``cache``/images, made first by ``build(work, out)`` when absent.

    ``build`` fills ``out`` (the qcow2, the key pair via :func:`make_key`, ``meta.json`` via
    :func:`write_meta`) using ``work`` for scratch files. One build at a time per cache (a file lock:
    a concurrent caller waits, then finds it built); the result is published with an atomic rename.
    """
    final = cache / "images" / key
    if (final / META_NAME).is_file():
        return load_image(final, cached=True)
    _mkdir(cache)
    _mkdir(cache / "images")
    with FileLock(str(cache / "build.lock")):
        if (final / META_NAME).is_file():  # another process built it while we waited
            return load_image(final, cached=True)
        _mkdir(cache / "tmp")
        for stale in (cache / "tmp").iterdir():  # leftovers of a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=cache / "tmp", prefix="build-") as tmp:
            out = Path(tmp) / "out"
            _mkdir(out)
            build(Path(tmp), out)
            os.replace(out, final)
        _prune_old(cache / "images", keep=KEEP_IMAGES)
    return load_image(final, cached=False)


def _prune_old(images: Path, keep: int) -> None:
    """Drop all but the ``keep`` newest builds (each builder edit makes a new one)."""
    builds = sorted(
        (p for p in images.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def make_key(out: Path, comment: str) -> str:
    """A fresh ed25519 key pair in ``out`` (the private key is root's way in); the public key."""
    guest_debs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(out / KEY_NAME)])
    os.chmod(out / f"{KEY_NAME}.pub", 0o644)
    return (out / f"{KEY_NAME}.pub").read_text()


def write_meta(
    out: Path, key: str, *, build_seconds: float, kernel_version: str, packages: list[list[str]]
) -> None:
    """``meta.json`` of a finished build in ``out`` (with the SHA256 of its qcow2)."""
    h = hashlib.sha256()
    with (out / QCOW2_NAME).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    meta = {
        "inputs_hash": key,
        "content_hash": h.hexdigest(),
        "build_seconds": round(build_seconds, 3),
        "kernel_version": kernel_version,
        "packages": packages,
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=1))
    os.chmod(out / META_NAME, 0o644)


def _build(refs: list[PackageRef], deb_dir: Path, work: Path, out: Path, key: str) -> None:
    start = time.monotonic()
    debs = guest_debs.fetch(refs, deb_dir)
    unpacked: dict[str, Path] = {}
    for ref in refs:
        unpacked[ref.name] = work / "pkgs" / ref.name
        guest_debs.unpack(debs[ref.name], unpacked[ref.name])
    kernels = [r.name for r in refs if r.name.startswith("linux-image-") and r.name != PACKAGES[0]]
    if len(kernels) != 1:
        raise GuestBuildError(f"expected one versioned kernel package, got {kernels}")
    public_key = make_key(out, "vcl-test-guest")
    tree = work / "root"
    tree.mkdir()
    version = guest_rootfs.populate(
        tree, unpacked, kernel_pkg=kernels[0], modules=MODULES, public_key=public_key, label=LABEL
    )
    shutil.rmtree(work / "pkgs")
    guest_disk.make_disk(tree, work, out / QCOW2_NAME, DISK_MIB, LABEL)
    seconds = time.monotonic() - start
    packages = [[r.name, r.version] for r in refs]
    write_meta(out, key, build_seconds=seconds, kernel_version=version, packages=packages)
    log.info("built the test guest image %s in %.1f s", key[:12], seconds)
