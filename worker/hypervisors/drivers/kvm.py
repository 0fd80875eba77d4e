"""KVM driver (libvirt/KVM.pm): domain type, master materialisation, COW overlay, disk copies."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import filelock

from worker.failpoints import failpoint
from worker.hypervisors import qemuimg
from worker.hypervisors.drivers.base import register_driver
from worker.hypervisors.errors import (
    ImageCorruptError,
    ImageNotFoundError,
    InvalidInputError,
    LockTimeoutError,
)

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost
    from worker.hypervisors.provisioner import LibvirtProvisioner

log = logging.getLogger(__name__)
_warned = {"virt-win-reg": False}
MASTER_MODE = 0o444


def _windows_reg_text() -> str:
    lines = ["Windows Registry Editor Version 5.00", ""]
    for svc in ("VClone", "vmci", "vmmouse", "vmscsi", "VMTools", "vmx_svga", "vmxnet"):
        lines += [
            f"[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\{svc}]",
            '"Start"=dword:00000004',
            "",
        ]
    return "\r\n".join(lines)


class KVMDriver:
    name = "KVM"

    def __init__(self) -> None:
        self.has_virt_win_reg = False

    # ------------------------------------------------------------------ probe / facts
    def probe(self, host: LibvirtHost) -> bool:
        """Connection type QEMU and qemu-img present; virt-win-reg optional (warning only)."""
        if host.hypervisor_type().upper() != "QEMU":
            return False
        if not qemuimg.available():
            log.warning("KVM driver: qemu-img is not installed")
            return False
        self.has_virt_win_reg = shutil.which("virt-win-reg") is not None
        if not self.has_virt_win_reg and not _warned["virt-win-reg"]:
            # Once per process: every provisioner probes the driver, the fact does not change.
            _warned["virt-win-reg"] = True
            log.warning(
                "KVM driver: virt-win-reg not installed; Windows images copied from the repository "
                "will not get their VMware services disabled"
            )
        return True

    def get_domain_type(self, host: LibvirtHost) -> str:
        """``kvm`` when the host offers it and /dev/kvm exists, else ``qemu`` (TCG)."""
        if os.path.exists("/dev/kvm") and host.offers_domain_type("kvm"):
            return "kvm"
        return "qemu"

    def get_disk_driver_name(self) -> str:
        return "qemu"

    def extend_domain_xml(self, prov: LibvirtProvisioner, xml: str) -> str:
        return xml

    # ------------------------------------------------------------------ disk helpers
    def get_virtual_disk_file_info(self, path: str, timeout: float = 60) -> qemuimg.ImageInfo:
        return qemuimg.info(path, timeout=timeout)

    def get_virtual_disk_size_bytes(self, paths: Sequence[str], timeout: float = 60) -> int:
        total = 0
        for p in paths:
            inf = qemuimg.info(p, timeout=timeout)
            total += inf.actual_size
            if inf.full_backing_filename and os.path.exists(inf.full_backing_filename):
                total += self.get_virtual_disk_size_bytes([inf.full_backing_filename], timeout)
        return total

    def copy_virtual_disk(
        self,
        sources: str | Sequence[str],
        dst: str,
        fmt: str,
        *,
        progress: Callable[[float], None] | None = None,
        compat: str | None = None,
        timeout: float = 7200,
        mode: int | None = None,
    ) -> None:
        """``qemu-img convert -p`` to ``<dst>.part`` then rename; the extension must equal the format."""
        ext = os.path.splitext(dst)[1].lstrip(".")
        if ext.lower() != fmt.lower():
            raise InvalidInputError(f"destination {dst!r} extension {ext!r} does not match format {fmt!r}")
        srcs = [sources] if isinstance(sources, str) else list(sources)
        if len(srcs) > 1 or (srcs and srcs[0].lower().endswith(".vmdk")):
            # split vmdk: prefer the descriptor <dir>/<name without -sNNN>.vmdk when present
            first = srcs[0]
            descriptor = os.path.join(
                os.path.dirname(first), re.sub(r"-s\d+\.vmdk$", ".vmdk", os.path.basename(first), flags=re.I)
            )
            if descriptor != first and os.path.exists(descriptor):
                srcs = [descriptor]
        qemuimg.convert(srcs, dst, fmt, compat=compat, progress=progress, timeout=timeout, mode=mode)
        # the captured-domain XML follows the image (KVM.pm copy_virtual_disk)
        src_xml = os.path.splitext(srcs[0])[0] + ".xml"
        dst_xml = os.path.splitext(dst)[0] + ".xml"
        if os.path.exists(src_xml) and not os.path.exists(dst_xml):
            with contextlib.suppress(OSError):
                shutil.copyfile(src_xml, dst_xml)

    def create_copy_on_write_image(
        self, master: str, cow: str, fmt: str = "qcow2", timeout: float = 60
    ) -> None:
        inf = self.validate_master(master, None, timeout)
        qemuimg.create_overlay(master, cow, backing_format=inf.format, fmt=fmt, timeout=timeout)

    def validate_master(
        self, master: str, expected_format: str | None, timeout: float = 60
    ) -> qemuimg.ImageInfo:
        """Refuse unreadable masters, format mismatches and masters with a backing file or data-file."""
        try:
            inf = qemuimg.info(master, timeout=timeout)
        except ImageCorruptError:
            raise
        except Exception as exc:
            raise ImageCorruptError(f"master {master} cannot be inspected: {exc}") from exc
        if expected_format and inf.format != expected_format:
            raise ImageCorruptError(
                f"master {master} is not a valid {expected_format} image "
                f"(qemu-img detects format {inf.format!r})"
            )
        if inf.backing_filename:
            raise ImageCorruptError(
                f"master {master} has its own backing file {inf.backing_filename!r}; refusing it"
            )
        if inf.data_file:
            raise ImageCorruptError(
                f"master {master} has an external data-file {inf.data_file!r}; refusing it"
            )
        return inf

    def update_windows_image(self, disk: str) -> bool:
        """Disable VMware services with ``virt-win-reg --merge``; False (warning) when not installed."""
        if shutil.which("virt-win-reg") is None:
            log.warning("virt-win-reg not installed: %s not updated for KVM", disk)
            return False
        with tempfile.NamedTemporaryFile("w", suffix=".reg", delete=False) as fh:
            fh.write(_windows_reg_text())
            reg = fh.name
        try:
            proc = subprocess.run(
                ["virt-win-reg", "--merge", disk, reg],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                raise ImageCorruptError(f"virt-win-reg --merge {disk} failed: {proc.stderr.strip()}")
            return True
        finally:
            os.unlink(reg)

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def image_lock(self, prov: LibvirtProvisioner, image_name: str, timeout: float) -> Iterator[None]:
        """Cross-process per-image lock ``<lock_dir>/master-<image>.lock`` (filelock)."""
        lock_dir = prov.settings.lock_dir
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        lock = filelock.FileLock(os.path.join(lock_dir, f"master-{image_name}.lock"), timeout=timeout)
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise LockTimeoutError(
                f"could not lock master image {image_name!r} within {timeout:g} s"
            ) from exc
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ pre_define
    def ensure_master(self, prov: LibvirtProvisioner) -> tuple[str, bool]:
        """Master present (copied from the repository under the per-image lock if missing). (path, copied)."""
        image_name = prov.get_image_name()
        dstype = prov.datastore_imagetype
        settings = prov.settings
        master = prov.get_master_image_file_path()
        if os.path.isfile(master):
            return master, False
        with self.image_lock(prov, image_name, timeout=settings.qemu_img_convert_timeout):
            master = prov.get_master_image_file_path()  # re-check inside the lock
            if os.path.isfile(master):
                return master, False
            repo_files = prov.find_repository_image_file_paths()
            if not repo_files:
                repo = prov.reservation.vmprofile.repository_path
                where = (
                    f"repository {repo!r} has no file matching {image_name!r}*"
                    if repo
                    else ("no image repository is configured")
                )
                raise ImageNotFoundError(
                    f"master image {master} for {image_name!r} does not exist in the datastore and {where}"
                )
            for src in repo_files:
                # qemu-img convert flattens a backing chain: a repository file whose backing file or
                # data-file points elsewhere would copy that file's bytes into the new master.
                self.validate_master(src, None, settings.qemu_img_info_timeout)
            os.makedirs(os.path.dirname(master), mode=0o755, exist_ok=True)
            prov.emit("copy", f"copying {image_name} from the repository", 0.0)

            def on_copy(pct: float) -> None:
                if pct >= 30.0:
                    failpoint("core.master_copy")
                prov.emit("copy", f"copying {image_name}", pct)

            self.copy_virtual_disk(
                repo_files,
                master,
                dstype,
                progress=on_copy,
                timeout=settings.qemu_img_convert_timeout,
                mode=MASTER_MODE,
            )
            if "windows" in prov.reservation.os_type.lower():
                self.update_windows_image(master)
            return master, True

    def pre_define(self, prov: LibvirtProvisioner) -> bool:
        """Master from the repository if missing, then the COW overlay (explicit backing format)."""
        master, copied = self.ensure_master(prov)
        prov.master_copied = copied
        timeout = prov.settings.qemu_img_info_timeout
        dstype = prov.datastore_imagetype
        inf = self.validate_master(master, dstype if dstype in ("qcow2", "qcow", "raw") else None, timeout)
        cow = prov.get_copy_on_write_file_path()
        os.makedirs(os.path.dirname(cow), mode=0o755, exist_ok=True)
        if os.path.lexists(cow):
            os.unlink(cow)
        if re.match(r"^qcow2?$", dstype):
            qemuimg.create_overlay(master, cow, backing_format=inf.format, fmt=dstype, timeout=timeout)
            failpoint("core.after_cow")
        else:
            self.copy_virtual_disk(master, cow, dstype, timeout=prov.settings.qemu_img_convert_timeout)
        prov.master_path = master
        return True


register_driver("KVM", KVMDriver)

__all__ = ["MASTER_MODE", "KVMDriver"]
