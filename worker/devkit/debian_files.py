"""What the Debian test image adds to a plain ``mmdebstrap`` tree: config files and the customize hook.

Two overlays are synced into the chroot by mmdebstrap's ``sync-in`` hook command: the *early* one
(essential hook, before the kernel and initramfs-tools are installed, so the only initramfs ever built
is the small one) and the *late* one (customize hook); then :data:`CUSTOMIZE` runs on the host with the
chroot as ``$1``. Everything here is part of the image's cache key (the builder's source is hashed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

# Storage for virtio/IDE/SATA/SCSI disks (ext4 needs crc32c through the crypto API, not a module
# dependency) and the NICs libvirt offers (VCL's default XML: IDE + rtl8139). MODULES=list puts exactly
# these (and their dependencies) in the initramfs and loads them there; udev loads the rest after
# switch_root from the root file system.
INITRAMFS_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "ata_piix", "ahci", "sd_mod",
    "crc32c_generic", "ext4", "e1000", "e1000e", "8139cp", "8139too",
)  # fmt: skip
# A drop-in list initramfs-tools reads beside /etc/initramfs-tools/modules; the customize hook moves
# its lines into that admin-facing file (the conffile is not ours before initramfs-tools is installed).
EARLY_MODULES_LIST = "usr/share/initramfs-tools/modules.d/vcl-worker"
HOSTNAME = "debian"
HOSTKEYS_UNIT = "vcl-ssh-hostkeys.service"

INITRAMFS_CONF = """# vcl-worker test image: only the drivers listed in /etc/initramfs-tools/modules, a 6 MB
# initramfs instead of ~35 MB with MODULES=most: GRUB reads it through BIOS calls, slow under TCG.
MODULES=list
RESUME=none
# zstd -19: ~20% smaller than gzip (what mkinitramfs uses without zstd), and faster to unpack.
COMPRESS=zstd
COMPRESSLEVEL=19
"""

INTERFACES = """# eth0 (VCL's private NIC) and eth1 (public) both take their address by DHCP.
# allow-hotplug, not auto: a NIC that is absent, or gets no lease, holds up nothing at boot.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp

allow-hotplug eth1
iface eth1 inet dhcp
"""

# mitigations=off: a test guest under TCG; page-table isolation alone makes every system call flush
# QEMU's software TLB.
GRUB_CFG = """set default=0
set timeout=0
menuentry "Debian GNU/Linux 12 (bookworm), vcl-worker test image" {
  linux /vmlinuz root=LABEL=@LABEL@ ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 mitigations=off
  initrd /initrd.img
}
"""

# No fsck at boot (pass 0): the image is made clean and each clone lives for one reservation.
FSTAB = "LABEL=@LABEL@ / ext4 errors=remount-ro 0 0\n"

# Every clone makes its own host keys on its first boot (the build removes the ones the package made):
# ed25519 and ECDSA only, which take milliseconds; a 3072-bit RSA key took over a minute under TCG on a
# busy host, on the way to SSH.
HOSTKEYS_SERVICE = """[Unit]
Description=OpenSSH host keys of this machine (made on its first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=ssh.service
"""

SSHD_CONF = """# vcl-worker test image: root logs in with its key only; the host keys made on first boot.
PermitRootLogin prohibit-password
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
"""

# Background jobs a short-lived test guest never needs and that cost whole seconds of a TCG vCPU at
# boot (e2scrub_reap ran for over a minute) or wake apt up.
# modprobe@drm/efi_pstore/dm_mod: no GPU driver in the image (excluded), no EFI, no device mapper.
MASKED_UNITS = (
    "e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
    "modprobe@drm.service", "modprobe@efi_pstore.service", "modprobe@dm_mod.service",
)  # fmt: skip

CUSTOMIZE = """#!/bin/sh
# mmdebstrap customize hook: runs on the host, the finished chroot is $1.
set -eu
root="$1"
in_root() { chroot "$root" "$@"; }

# SSH: on at boot (also as sshd.service, the name VCL's Linux module looks for), root by key only.
in_root systemctl enable ssh.service @HOSTKEYS_UNIT@
in_root systemctl mask @MASKED_UNITS@
rm -f "$root"/etc/ssh/ssh_host_*
sed -i -E 's/^#?PermitRootLogin .*/PermitRootLogin prohibit-password/' "$root/etc/ssh/sshd_config"
grep -qx 'PermitRootLogin prohibit-password' "$root/etc/ssh/sshd_config"
in_root passwd --quiet --lock root

# The initramfs driver list, from the early drop-in to the admin's file (same content: no rebuild).
cat "$root/@EARLY_MODULES_LIST@" >> "$root/etc/initramfs-tools/modules"
rm "$root/@EARLY_MODULES_LIST@"
test -e "$root/vmlinuz" && test -e "$root/initrd.img"

# Identity: each clone gets its own machine-id on its first boot; DHCP writes resolv.conf.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"

# Keep only archives the lists still offer; the next hook copies them out for the next build.
in_root apt-get -qq autoclean
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _fix_dir_modes(top: Path) -> None:
    """sync-in extracts a tar over the chroot: its directories must carry the chroot's own modes."""
    for d in [top, *(p for p in top.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o700 if d.relative_to(top).parts[:1] == ("root",) else 0o755)


def write_early_overlay(top: Path, label: str, modules: Sequence[str] = INITRAMFS_MODULES) -> None:
    """Files the chroot needs before the kernel and initramfs-tools are installed."""
    _write(top / "etc/initramfs-tools/conf.d/vcl-worker.conf", INITRAMFS_CONF)
    _write(top / EARLY_MODULES_LIST, "".join(f"{m}\n" for m in modules))
    _write(top / "etc/fstab", FSTAB.replace("@LABEL@", label))  # the initramfs fsck hook reads it
    _fix_dir_modes(top)


def write_late_overlay(top: Path, label: str, public_key: str) -> None:
    """Network, boot loader config, host name, root's key, the host-key unit."""
    _write(top / "etc/network/interfaces", INTERFACES)
    _write(top / "boot/grub/grub.cfg", GRUB_CFG.replace("@LABEL@", label))
    _write(top / "etc/hostname", f"{HOSTNAME}\n")
    _write(top / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n")
    _write(top / "etc/systemd/system" / HOSTKEYS_UNIT, HOSTKEYS_SERVICE)
    _write(top / "etc/ssh/sshd_config.d/vcl-worker.conf", SSHD_CONF)
    _write(top / "root/.ssh/authorized_keys", public_key.strip() + "\n", 0o600)
    _fix_dir_modes(top)


def write_customize_script(path: Path) -> None:
    text = (
        CUSTOMIZE.replace("@HOSTKEYS_UNIT@", HOSTKEYS_UNIT)
        .replace("@MASKED_UNITS@", " ".join(MASKED_UNITS))
        .replace("@EARLY_MODULES_LIST@", EARLY_MODULES_LIST)
    )
    if re.search(r"@[A-Z_]+@", text):
        raise ValueError("customize script: a placeholder was left unfilled")
    _write(path, text, 0o755)
