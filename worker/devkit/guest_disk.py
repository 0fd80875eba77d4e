"""Turn the guest's file tree into a disk that boots by itself: MBR, GRUB in the post-MBR gap, ext4.

No loop device, no mount and no ``grub-install``: ``mke2fs -d`` fills the file system from a
directory, ``sfdisk`` writes the partition table into the raw file, and GRUB's ``boot.img`` (first
440 bytes: the table and signature after it stay intact) and ``core.img`` (from sector 1, where
boot.img's built-in default looks for it) are written with ``dd conv=notrunc``.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.devkit.guest_debs import GuestBuildError, run

GRUB_DIR = Path("/usr/lib/grub/i386-pc")
SECTOR = 512
PART_START_SECTOR = 2048  # 1 MiB: the usual alignment, leaving the gap core.img lives in
# Just what the boot needs: BIOS disk access, the MBR table, ext4, the menu and the Linux loader.
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "normal", "linux", "configfile", "search")
# GRUB 2.06 cannot read these ext4 features, which e2fsprogs 1.47 turns on by default.
EXT4_FEATURES = "^metadata_csum_seed,^orphan_file"


def make_ext4(tree: Path, image: Path, size_bytes: int, label: str) -> None:
    with image.open("wb") as f:
        f.truncate(size_bytes)
    run(
        [
            "mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-O", EXT4_FEATURES,
            "-E", "root_owner=0:0", "-d", str(tree), str(image),
        ]
    )  # fmt: skip


def write_mbr(disk: Path) -> None:
    """One bootable Linux partition from 1 MiB to the end of the disk."""
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
        stdin=f"label: dos\nstart={PART_START_SECTOR}, type=83, bootable\n",
    )


def install_grub(disk: Path, work: Path) -> None:
    boot_img = GRUB_DIR / "boot.img"
    if not boot_img.is_file():
        raise GuestBuildError(f"{boot_img} missing (install grub-pc-bin)")
    core = work / "core.img"
    run(
        [
            "grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_DIR), "-o", str(core),
            "-p", "(hd0,msdos1)/boot/grub", *GRUB_MODULES,
        ]
    )  # fmt: skip
    if core.stat().st_size > (PART_START_SECTOR - 1) * SECTOR:
        raise GuestBuildError("core.img does not fit before the first partition")
    run(["dd", f"if={boot_img}", f"of={disk}", "bs=440", "count=1", "conv=notrunc", "status=none"])
    run(["dd", f"if={core}", f"of={disk}", f"bs={SECTOR}", "seek=1", "conv=notrunc", "status=none"])


def make_disk(tree: Path, work: Path, qcow2: Path, size_mib: int, label: str) -> None:
    """Build ``qcow2`` (``size_mib`` virtual) from the file tree ``tree``; scratch files go to ``work``."""
    disk = work / "disk.raw"
    fs = work / "root.ext4"
    make_ext4(tree, fs, size_mib * 1024 * 1024 - PART_START_SECTOR * SECTOR, label)
    with disk.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    write_mbr(disk)
    run(
        [
            "dd", f"if={fs}", f"of={disk}", "bs=1M", f"seek={PART_START_SECTOR * SECTOR // (1 << 20)}",
            "conv=notrunc,sparse", "status=none",
        ]
    )  # fmt: skip
    fs.unlink()
    install_grub(disk, work)
    with disk.open("rb") as f:
        f.seek(510)
        if f.read(2) != b"\x55\xaa":
            raise GuestBuildError("the disk has no MBR signature after sfdisk")
    # Compressed clusters: the image is only ever a read-only backing file, and it shrinks by a quarter.
    run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)])
    disk.unlink()
    os.chmod(qcow2, 0o644)
