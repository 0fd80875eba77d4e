"""The file tree of the test guest: busybox init, udhcpc, dropbear, acpid, kernel and initramfs.

The guest is a *test* image: its serial console is a root shell. Boot path: GRUB loads the kernel and
a small initramfs that loads the storage/NIC/input drivers, finds the root file system by label and
``switch_root``s to busybox init, whose rcS takes an address by DHCP on every ethN, starts dropbear
(root, public key only) and acpid (the power button powers the guest off, so ACPI shutdown works).
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker.devkit.guest_debs import GuestBuildError, prune, run
from worker.devkit.guest_kmod import Cpio, ModuleTree, needed_libraries, read_module

# Applets the initramfs /init uses (the root file system gets every applet).
_INITRAMFS_APPLETS = ("sh", "mount", "umount", "insmod", "findfs", "switch_root", "usleep", "cat", "echo")
# Paths of the library packages the guest never reads (locale converters, docs, audit modules).
_LIB_PRUNE = (
    "usr/share",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/audit",
    "usr/lib/dropbear",
    "usr/bin/dbclient",
    "usr/bin/dropbearconvert",
    "etc/ld.so.conf.d",
    "lib/x86_64-linux-gnu/libmvec.so.1",
)

INIT = """#!/bin/sh
# initramfs: load drivers, find the root file system by label, hand over to busybox init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko; done
root=""
n=0
# Disks appear asynchronously after their driver loads; wait up to 30 s.
while [ $n -lt 300 ]; do
  root=$(findfs LABEL=@LABEL@ 2>/dev/null) && break
  usleep 100000
  n=$((n + 1))
done
if [ -z "$root" ] || ! mount -t ext4 -o rw "$root" /newroot; then
  echo "initramfs: cannot mount LABEL=@LABEL@; dropping to a shell"
  exec sh
fi
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
"""

INITTAB = """::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

RCS = """#!/bin/sh
# busybox init's sysinit: mounts, entropy, DHCP on every ethN, dropbear, acpid.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# Mix the stored seed in now and make the kernel's CRNG initialise in the background while DHCP
# runs, so dropbear does not sit waiting for randomness; refresh the seed for the next boot.
cat /var/lib/random-seed > /dev/urandom
(head -c 1 /dev/random > /dev/null; head -c 512 /dev/urandom > /var/lib/random-seed) &
hostname -F /etc/hostname
ip link set lo up
for dev in /sys/class/net/eth*; do
  [ -e "$dev" ] || continue
  ifc=${dev##*/}
  ip link set "$ifc" up
  udhcpc -f -i "$ifc" -s /etc/udhcpc.script > /dev/null 2>&1 &
done
# Host key made on first boot: every clone of the image gets its own.
key=/etc/dropbear/dropbear_ed25519_host_key
[ -s $key ] || dropbearkey -t ed25519 -f $key > /dev/null 2>&1
dropbear -s -r $key
acpid
"""

UDHCPC = """#!/bin/sh
# udhcpc hook: apply a lease to $interface.
case "$1" in
  deconfig)
    ifconfig "$interface" 0.0.0.0 ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
    if [ -n "$router" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi
    if [ -n "$dns" ]; then
      for s in $dns; do echo "nameserver $s"; done > /etc/resolv.conf
    fi ;;
esac
exit 0
"""

POWER_BUTTON = "#!/bin/sh\n# busybox acpid runs this on the ACPI power button event.\npoweroff\n"

# busybox has poweroff/reboot but no shutdown; VCL's Linux OS module runs `shutdown -h now` (and -r).
SHUTDOWN = """#!/bin/sh
case " $* " in
  *" -r "*) exec reboot ;;
  *) exec poweroff ;;
esac
"""

GRUB_CFG = """set default=0
set timeout=0
menuentry "vcl test guest" {
  linux /boot/vmlinuz root=LABEL=@LABEL@ console=tty0 console=ttyS0,115200n8 loglevel=4
  initrd /boot/initrd.img
}
"""


_LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
_DYNAMIC_BINARIES = ("usr/sbin/dropbear", "usr/bin/dropbearkey")


def check_libraries(root: Path, binaries: Sequence[str] = _DYNAMIC_BINARIES) -> None:
    """Fail the build, not the boot, when a shared library a guest binary needs is missing."""
    todo = list(binaries)
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        for lib in needed_libraries((root / rel).read_bytes()):
            if lib in seen:
                continue
            seen.add(lib)
            found = [f"{d}/{lib}" for d in _LIB_DIRS if (root / d / lib).exists()]
            if not found:
                raise GuestBuildError(f"{rel} needs {lib}, which no guest package provides")
            todo.append(found[0])


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)


def kernel_parts(kernel_pkg: Path) -> tuple[str, Path, ModuleTree]:
    """Version, vmlinuz path and module tree of an unpacked linux-image package."""
    images = sorted((kernel_pkg / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise GuestBuildError(f"expected one vmlinuz in {kernel_pkg}/boot, found {images}")
    version = images[0].name.removeprefix("vmlinuz-")
    return version, images[0], ModuleTree.scan(kernel_pkg / "lib" / "modules" / version)


def busybox_applets(busybox: Path) -> list[str]:
    """Install paths of every applet (``bin/sh``, ``sbin/udhcpc`` ...) of this busybox build."""
    listed = run([str(busybox), "--list-full"]).split()
    if "sbin/init" not in listed or "bin/sh" not in listed:
        raise GuestBuildError("busybox lacks init or sh")
    return listed


def make_initramfs(busybox: Path, modules: ModuleTree, wanted: Sequence[str], label: str) -> bytes:
    """gzip-compressed cpio: busybox, the drivers in load order and /init."""
    order = modules.load_order(wanted)
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys"):
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _INITRAMFS_APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    for name in order:
        cpio.file(f"lib/modules/{name}.ko", read_module(modules.files[name]))
    cpio.file("etc/modules", ("\n".join(order) + "\n").encode())
    cpio.file("init", INIT.replace("@LABEL@", label).encode(), 0o755)
    return gzip.compress(cpio.getvalue(), compresslevel=6, mtime=0)


def populate(
    root: Path,
    pkgs: Mapping[str, Path],
    *,
    kernel_pkg: str,
    modules: Sequence[str],
    public_key: str,
    label: str,
    hostname: str = "vclguest",
) -> str:
    """Fill ``root`` with the guest's files; returns the kernel version."""
    busybox = pkgs["busybox-static"] / "bin" / "busybox"
    version, vmlinuz, tree = kernel_parts(pkgs[kernel_pkg])
    for name, tree_root in sorted(pkgs.items()):
        # Everything but the kernel (only vmlinuz + modules are used) and busybox (one file).
        if not name.startswith("linux-image-") and name != "busybox-static":
            _copy_tree(tree_root, root)
    prune(root, _LIB_PRUNE)
    check_libraries(root)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in busybox_applets(busybox):
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for d in ("proc", "sys", "dev", "run", "tmp", "etc/dropbear", "var/lib", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 (the guest's sticky /tmp)
    (root / "var" / "run").symlink_to("/run")
    _write(root / "boot" / "vmlinuz", vmlinuz.read_bytes())
    _write(root / "boot" / "initrd.img", make_initramfs(busybox, tree, modules, label))
    _write(root / "boot" / "grub" / "grub.cfg", GRUB_CFG.replace("@LABEL@", label))
    _write(root / "etc" / "inittab", INITTAB)
    _write(root / "etc" / "init.d" / "rcS", RCS, 0o755)
    _write(root / "etc" / "udhcpc.script", UDHCPC, 0o755)
    _write(root / "etc" / "acpi" / "PWRF" / "00000080", POWER_BUTTON, 0o755)
    if not (root / "sbin" / "shutdown").exists():
        _write(root / "sbin" / "shutdown", SHUTDOWN, 0o755)
    _write(root / "etc" / "hostname", hostname + "\n")
    _write(root / "etc" / "hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    _write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc" / "group", "root:x:0:\n")
    # '*' is no valid password hash: key-only root, without the "locked account" meaning of '!'.
    _write(root / "etc" / "shadow", "root:*:19000:0:99999:7:::\n", 0o600)
    _write(root / "etc" / "shells", "/bin/sh\n")
    _write(root / "var" / "lib" / "random-seed", os.urandom(512), 0o600)
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(root / "root", 0o700)
    os.chmod(ssh_dir, 0o700)
    _write(ssh_dir / "authorized_keys", public_key.strip() + "\n", 0o600)
    return version
