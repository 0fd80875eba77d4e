"""Debian 12 (bookworm) with systemd as a VCL test image, built offline with ``mmdebstrap``.

``ensure_debian_image()`` gives the same :class:`~worker.devkit.guest_image.GuestImage` as the tiny
guest's ``ensure_guest_image()`` (so ``install_guest_master`` takes it unchanged): a qcow2 (3 GiB
virtual) that boots by itself (MBR + GRUB + Debian's kernel and a small initramfs), takes eth0 and
eth1 by DHCP (ifupdown + dhclient), runs OpenSSH (root by the build's key only), powers off on the
ACPI power button (systemd-logind) and has what VCL's Linux OS module runs on a guest (useradd,
chpasswd, iptables, systemctl, hostnamectl, ifconfig/route/netstat, lsb_release ...).

The tree comes from ``mmdebstrap --variant=minbase --mode=root --format=directory`` with the machine's
own apt sources for bookworm (nothing else is downloaded); the disk is made the tiny guest's way
(``guest_disk``: ``mke2fs -d``, ``sfdisk``, ``grub-mkimage`` + ``dd``; no loop device, no mount outside
mmdebstrap's own private mount namespace). The cache key is a SHA256 of the package list, this
builder's source and the apt sources it reads, so an archive update alone does not rebuild it; the
package versions it got are in its ``meta.json``. Downloaded archives are kept between builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from worker.devkit import debian_files, guest_disk
from worker.devkit.guest_debs import GuestBuildError, run
from worker.devkit.guest_image import QCOW2_NAME, GuestImage, build_cached, make_key, write_meta

__all__ = ["DEFAULT_CACHE_DIR", "GuestBuildError", "apt_sources", "default_cache_dir", "ensure_debian_image"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("/var/cache/vcl-worker/debian")
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "linux-image-amd64", "openssh-server", "sudo", "iptables", "ifupdown",
    "isc-dhcp-client", "iproute2", "net-tools", "procps", "dbus", "initramfs-tools", "less",
    # What VCL's Linux OS module runs on a guest beyond those: useradd/chpasswd, ssh-keygen,
    # lsb_release (Ubuntu.pm), udev/kmod for the drivers; zstd compresses the initramfs.
    "passwd", "openssh-client", "lsb-release", "udev", "kmod", "zstd",
)  # fmt: skip
# Documentation and the kernel drivers no VM needs (GPUs, cameras, Wi-Fi, sound ...): dpkg does not
# install them (its own path-exclude mechanism, so the package database stays consistent).
_MODULES = "/lib/modules/*/kernel"
DPKG_EXCLUDES = (
    "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*", "/usr/share/lintian/*",
    "/usr/share/doc/*",
    *(f"{_MODULES}/{d}/*" for d in (
        "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/infiniband", "sound",
        "drivers/staging", "drivers/iio", "drivers/bluetooth", "net/bluetooth", "drivers/comedi",
        "drivers/isdn", "net/mac80211", "net/wireless",
    )),
)  # fmt: skip
DPKG_INCLUDES = ("/usr/share/doc/*/copyright",)
DISK_MIB = 3072
LABEL = "vcldebian"
MMDEBSTRAP_TIMEOUT = 1800.0
ARCHIVES = "/var/cache/apt/archives"
SOURCE_FILES = ("debian_image.py", "debian_files.py", "guest_disk.py")


def default_cache_dir() -> Path:
    return Path(os.environ.get("VCL_DEBIAN_CACHE") or DEFAULT_CACHE_DIR)


def apt_sources(suite: str = SUITE) -> list[Path]:
    """The machine's own apt source files that serve ``suite`` (one-line or deb822 format)."""
    candidates = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        candidates += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    word = re.compile(rf"(^|\s){re.escape(suite)}(\s|$)", re.MULTILINE)
    found = []
    for p in candidates:
        if p.is_file():
            text = "\n".join(ln for ln in p.read_text().splitlines() if not ln.lstrip().startswith("#"))
            if word.search(text):
                found.append(p)
    if not found:
        raise GuestBuildError(f"no apt source of this machine serves {suite} (/etc/apt/sources.list*)")
    return found


def _inputs_hash(sources: list[Path]) -> str:
    here = Path(__file__).parent
    material = {
        "source": {n: hashlib.sha256((here / n).read_bytes()).hexdigest() for n in SOURCE_FILES},
        "packages": sorted(PACKAGES),
        "params": {"suite": SUITE, "disk_mib": DISK_MIB, "label": LABEL},
        "apt_sources": {str(p): p.read_text() for p in sources},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def ensure_debian_image(cache_dir: Path | str | None = None) -> GuestImage:
    """The cached Debian image for the current inputs, building it first when absent (~2-3 min)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if shutil.which("mmdebstrap") is None:
        raise GuestBuildError("mmdebstrap is not installed (make setup installs it)")
    sources = apt_sources()
    key = _inputs_hash(sources)
    return build_cached(cache, key, lambda work, out: _build(sources, cache / "debs", work, out, key))


def mmdebstrap_argv(tree: Path, work: Path, sources: list[Path], deb_cache: Path) -> list[str]:
    """The mmdebstrap command line, run in a private mount namespace: its /proc, /sys and /dev
    mounts in the chroot vanish with it, even when it is killed."""
    early, late, debs_out = work / "early", work / "late", work / "debs-out"
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory", "--quiet",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
        *(f"--dpkgopt=path-include={p}" for p in DPKG_INCLUDES),
        # Archives of earlier builds are offered to apt (hard links: same file system; apt checks their
        # hashes against the lists).
        "--skip=download/empty", "--skip=essential/unlink",
        f'--setup-hook=mkdir -p "$1{ARCHIVES}" && cp -al {deb_cache}/. "$1{ARCHIVES}/"',
        f"--essential-hook=sync-in {early} /",
        f"--customize-hook=sync-in {late} /",
        f"--customize-hook={work / 'customize.sh'}",
        f"--customize-hook=sync-out {ARCHIVES} {debs_out}",
        SUITE, str(tree), *map(str, sources),
    ]  # fmt: skip


def _installed_packages(tree: Path) -> list[list[str]]:
    """(name, version) of every installed package, from the tree's dpkg status file."""
    out = []
    for stanza in (tree / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln[0].isspace())
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            out.append([fields["Package"], fields.get("Version", "")])
    return sorted(out)


def _check_tree(tree: Path) -> str:
    """Fail the build, not the boot; the kernel version."""
    os_release = (tree / "etc/os-release").read_text()
    if f"VERSION_CODENAME={SUITE}" not in os_release:
        raise GuestBuildError(f"the tree is not {SUITE}: {os_release!r}")
    kernel = tree / "vmlinuz"
    if not kernel.is_symlink() or not (tree / "initrd.img").is_symlink():
        raise GuestBuildError("the kernel package left no /vmlinuz and /initrd.img links")
    if not (tree / "etc/systemd/system/multi-user.target.wants/ssh.service").is_symlink():
        raise GuestBuildError("ssh.service is not enabled in the tree")
    leftovers = list((tree / "var/cache/apt/archives").glob("*.deb")) + list(
        (tree / "var/lib/apt/lists").glob("*_Packages*")
    )
    if leftovers:
        raise GuestBuildError(f"apt caches left in the image: {leftovers[:3]}")
    return os.readlink(kernel).rsplit("vmlinuz-", 1)[-1]


def _refresh_deb_cache(debs_out: Path, deb_cache: Path) -> None:
    """The archives this build used replace the cache (older versions drop out)."""
    old = deb_cache.with_name(deb_cache.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if deb_cache.exists():
        os.replace(deb_cache, old)
    keep = deb_cache.with_name(deb_cache.name + ".new")
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    for deb in debs_out.glob("*.deb"):
        os.replace(deb, keep / deb.name)
    os.replace(keep, deb_cache)
    shutil.rmtree(old, ignore_errors=True)


def _build(sources: list[Path], deb_cache: Path, work: Path, out: Path, key: str) -> None:
    start = time.monotonic()
    public_key = make_key(out, "vcl-debian-test-image")
    deb_cache.mkdir(parents=True, exist_ok=True)
    (work / "debs-out").mkdir()
    debian_files.write_early_overlay(work / "early", LABEL)
    debian_files.write_late_overlay(work / "late", LABEL, public_key)
    debian_files.write_customize_script(work / "customize.sh")
    tree = work / "root"
    run(mmdebstrap_argv(tree, work, sources, deb_cache), timeout=MMDEBSTRAP_TIMEOUT)
    tree_seconds = time.monotonic() - start
    version = _check_tree(tree)
    packages = _installed_packages(tree)
    _refresh_deb_cache(work / "debs-out", deb_cache)
    guest_disk.make_disk(tree, work, out / QCOW2_NAME, DISK_MIB, LABEL)
    shutil.rmtree(tree)
    seconds = time.monotonic() - start
    write_meta(out, key, build_seconds=seconds, kernel_version=version, packages=packages)
    log.info(
        "built the Debian test image %s in %.1f s (mmdebstrap %.1f s, kernel %s)",
        key[:12], seconds, tree_seconds, version,
    )  # fmt: skip
