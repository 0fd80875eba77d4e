"""KVM driver (libvirt/KVM.pm): domain type, master materialisation, COW overlay, disk copies."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.failpoints import failpoint
from worker.hypervisors import qemuimg, vmdk
from worker.hypervisors.domain_type import DomainTypeChoice, choose_domain_type
from worker.hypervisors.drivers import image_locks
from worker.hypervisors.drivers.base import (
    CopyProgress,
    DiskOptions,
    MasterImage,
    PreparedDisk,
    register_driver,
)
from worker.hypervisors.errors import (
    ImageCorruptError,
    ImageNotFoundError,
    InvalidInputError,
    QemuImgError,
)

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost

log = logging.getLogger(__name__)
_warned = {"virt-win-reg": False}
MASTER_MODE = 0o444  # masters are shared by every overlay: nobody writes them after the copy
# A domain's own disk holds the user's data: QEMU's user only (libvirt's dynamic ownership would
# chown it at start anyway; doing it here also works where that is switched off).
DISK_MODE = 0o600
# Repository copies of a captured image: the user's work, not for every local account to read.
COPY_MODE = 0o640
_QEMU_USERS = ("libvirt-qemu", "qemu")  # Debian/Ubuntu, then Fedora/RHEL


def qemu_owner() -> tuple[int, int] | None:
    """(uid, gid) QEMU runs as, when we may chown to it (root) and that user exists."""
    if os.geteuid() != 0:
        return None
    for name in _QEMU_USERS:
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            # libvirt's default qemu.conf group is the user's namesake (Debian: libvirt-qemu, whose
            # primary group is kvm); libvirt's dynamic ownership would set the same pair at start.
            with contextlib.suppress(KeyError):
                return pw.pw_uid, grp.getgrnam(name).gr_gid
            return pw.pw_uid, pw.pw_gid
    return None


def known_format(path: str, fallback: str | None, what: str) -> str:
    """The format of ``path`` from its extension, else ``fallback`` (the vmprofile's image type)
    when that names a qemu-img format; never left to qemu-img's probing."""
    fmt = qemuimg.format_from_extension(path) or qemuimg.format_from_extension(f"x.{fallback or ''}")
    if fmt is None:
        raise InvalidInputError(
            f"{what} {path}: cannot tell its format (extension and image type {fallback!r} name no "
            "qemu-img format) and formats are never probed"
        )
    return fmt


def _windows_reg_text() -> str:
    lines = ["Windows Registry Editor Version 5.00", ""]
    for svc in ("VClone", "vmci", "vmmouse", "vmscsi", "VMTools", "vmx_svga", "vmxnet"):
        lines += [
            f"[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\{svc}]",
            '"Start"=dword:00000004',
            "",
        ]
    return "\r\n".join(lines)


_logged_choice: dict[str, DomainTypeChoice] = {}


def _prefer_vmdk_descriptor(files: list[str], image_name: str) -> list[str]:
    """A vmdk's descriptor ``<name>.vmdk`` next to its extents stands for them all (VCL's search
    drops it; a flat extent alone is raw data, not a vmdk qemu-img could open)."""
    if not files or not all(f.lower().endswith(".vmdk") for f in files):
        return files
    descriptor = os.path.join(os.path.dirname(files[0]), f"{image_name}.vmdk")
    return [descriptor] if os.path.isfile(descriptor) else files


class KVMDriver:
    name = "KVM"
    boots_guests = True

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

    def get_domain_type(self, host: LibvirtHost, override: str = "") -> str:
        """``kvm`` only where hardware KVM runs unmodified guests, else ``qemu`` (TCG); see
        :mod:`worker.hypervisors.domain_type`. The choice and its reason are logged once per process."""
        choice = choose_domain_type(override or None, libvirt_offers=host.offers_domain_type)
        if _logged_choice.get(host.uri) != choice:
            _logged_choice[host.uri] = choice
            log.info("domain type on %s: %s (%s)", host.uri, choice.domain_type, choice.reason)
        return choice.domain_type

    def get_disk_driver_name(self) -> str:
        return "qemu"

    # ------------------------------------------------------------------ disk helpers
    def copy_virtual_disk(
        self,
        sources: str | Sequence[str],
        dst: str,
        fmt: str,
        *,
        source_format: str | None = None,
        progress: CopyProgress | None = None,
        compat: str | None = None,
        timeout: float = 7200,
        read_only: bool = False,
        mode: int | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """``qemu-img convert -p`` to ``<dst>.part`` then rename; the extension must equal the format.

        ``read_only`` makes the result a master: mode 0444 before it appears under its name; other
        copies get :data:`COPY_MODE` unless ``mode`` says otherwise. Image locks are respected: a
        source a running guest writes is refused, never copied half-written.
        """
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
            for src in srcs:
                vmdk.check_descriptor(src)  # no extent outside the image's directory is ever read
        qemuimg.convert(
            srcs,
            dst,
            fmt,
            src_fmt=source_format,
            compat=compat,
            progress=progress,
            timeout=timeout,
            mode=MASTER_MODE if read_only else (COPY_MODE if mode is None else mode),
            owner=owner,
        )
        # the captured-domain XML follows the image (KVM.pm copy_virtual_disk)
        src_xml = os.path.splitext(srcs[0])[0] + ".xml"
        dst_xml = os.path.splitext(dst)[0] + ".xml"
        if os.path.exists(src_xml) and not os.path.exists(dst_xml):
            with contextlib.suppress(OSError):
                shutil.copyfile(src_xml, dst_xml)

    def validate_master(
        self, path: str, fmt: str | None, timeout: float = 60, limits: qemuimg.Limits | None = None
    ) -> qemuimg.ImageInfo:
        """Refuse masters qemu-img cannot read as ``fmt`` and masters with a backing file or data-file.

        qemu-img's own message stays in the error; a timeout or a permission problem is not called
        corrupt (re-raised as the :class:`QemuImgError` it is). A vmdk must keep its extents in its
        own directory (checked in the descriptor before qemu-img opens it, then in qemu-img's view).
        """
        if fmt is None:
            raise InvalidInputError(f"master {path}: no format given and formats are never probed")
        if fmt == "vmdk":
            vmdk.check_descriptor(path)
        try:
            inf = qemuimg.info(path, fmt, timeout=timeout, limits=limits)
        except QemuImgError as exc:
            if exc.rc is None or "Permission denied" in exc.stderr:
                raise
            as_fmt = f" as {fmt}" if fmt else ""
            raise ImageCorruptError(f"master {path} cannot be read{as_fmt}: {exc}") from exc
        if inf.backing_filename:
            raise ImageCorruptError(
                f"master {path} has its own backing file {inf.backing_filename!r}; refusing it"
            )
        if inf.data_file:
            raise ImageCorruptError(f"master {path} has an external data-file {inf.data_file!r}; refusing it")
        if inf.format == "vmdk":
            vmdk.check_info_extents(path, inf.raw)
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
    def image_lock(
        self, lock_dir: str, image_name: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]:
        """Cross-process per-image lock ``<lock_dir>/master-<image>.lock`` (filelock)."""
        return image_locks.image_lock(lock_dir, image_name, timeout)

    # ------------------------------------------------------------------ disk of a new domain
    def ensure_master(
        self, master: MasterImage, options: DiskOptions, on_copy: CopyProgress | None = None
    ) -> tuple[str, bool]:
        """The master's path, copied from the repository under the per-image lock if missing, and
        whether this call copied it."""
        path = master.path()
        if os.path.isfile(path):
            return path, False
        with self.image_lock(options.lock_dir, master.image_name, timeout=options.convert_timeout):
            path = master.path()  # re-check inside the lock: another process may have copied it
            if os.path.isfile(path):
                return path, False
            repo_files = master.repository_files()
            if not repo_files:
                where = (
                    f"repository {master.repository_path!r} has no file matching {master.image_name!r}*"
                    if master.repository_path
                    else "no image repository is configured"
                )
                raise ImageNotFoundError(
                    f"master image {path} for {master.image_name!r} does not exist in the datastore "
                    f"and {where}"
                )
            # Then the datastore's own lock, always second: a datastore several hosts share (NFS)
            # gets one copy site-wide (the host's lock holds only on this host); the hosts that
            # waited find the master. Nothing is created in the datastore before a copy is due.
            sources, source_format = self._repository_sources(master, repo_files, options)
            with image_locks.datastore_lock(master, options):
                path = master.path()
                if os.path.isfile(path):
                    return path, False
                self._copy_master(
                    master, sources, path, options, on_copy=on_copy, source_format=source_format
                )
                return path, True

    def _repository_sources(
        self, master: MasterImage, repo_files: list[str], options: DiskOptions
    ) -> tuple[list[str], str | None]:
        """The repository files a master is copied from, checked, and their one format (if one)."""
        repo_files = _prefer_vmdk_descriptor(repo_files, master.image_name)
        # Several files are joined into one master only as the extents of one split vmdk; any
        # other set (name.qcow2 + name.raw) is ambiguous and would become one permanent master.
        if len(repo_files) > 1 and not all(f.lower().endswith(".vmdk") for f in repo_files):
            names = ", ".join(os.path.basename(f) for f in repo_files)
            raise ImageCorruptError(
                f"repository {master.repository_path!r} has several files for {master.image_name!r} "
                f"({names}); only the extents of one split vmdk are ever joined: refusing them"
            )
        # qemu-img convert flattens a backing chain: a repository file whose backing file or
        # data-file points elsewhere would copy that file's bytes into the new master. Repository
        # files are not ours, so qemu-img inspects them under resource limits, as the format
        # their name gives (never probed).
        formats = {
            self.validate_master(
                src,
                known_format(src, None, "repository file"),
                options.info_timeout,
                qemuimg.REPOSITORY_LIMITS,
            ).format
            for src in repo_files
        }
        return repo_files, formats.pop() if len(formats) == 1 else None

    def _copy_master(
        self,
        master: MasterImage,
        sources: list[str],
        path: str,
        options: DiskOptions,
        *,
        on_copy: CopyProgress | None,
        source_format: str | None,
    ) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if on_copy is not None:
            on_copy(0.0)

        def copied(pct: float) -> None:
            if pct >= 30.0:
                failpoint("core.master_copy")
            if on_copy is not None:
                on_copy(pct)

        self.copy_virtual_disk(
            sources,
            path,
            master.datastore_imagetype,
            source_format=source_format,
            progress=copied,
            timeout=options.convert_timeout,
            read_only=True,
        )
        if master.windows:
            self.update_windows_image(path)

    def prepare_disk(
        self, master: MasterImage, cow_path: str, options: DiskOptions, on_copy: CopyProgress | None = None
    ) -> PreparedDisk:
        """Master from the repository if missing, then the COW overlay (explicit backing format)."""
        master_path, copied = self.ensure_master(master, options, on_copy)
        dstype = master.datastore_imagetype
        inf = self.validate_master(
            master_path, known_format(master_path, dstype, "master"), options.info_timeout
        )
        os.makedirs(os.path.dirname(cow_path), mode=0o755, exist_ok=True)
        if os.path.lexists(cow_path):
            os.unlink(cow_path)
        owner = qemu_owner()
        if re.match(r"^qcow2?$", dstype):
            qemuimg.create_overlay(
                master_path,
                cow_path,
                backing_format=inf.format,
                fmt=dstype,
                timeout=options.info_timeout,
                mode=DISK_MODE,
                owner=owner,
            )
            failpoint("core.after_cow")
        else:
            self.copy_virtual_disk(
                master_path,
                cow_path,
                dstype,
                source_format=inf.format,
                timeout=options.convert_timeout,
                mode=DISK_MODE,
                owner=owner,
            )
        return PreparedDisk(master_path=master_path, cow_path=cow_path, master_copied=copied)


register_driver("KVM", KVMDriver)

__all__ = ["COPY_MODE", "DISK_MODE", "MASTER_MODE", "KVMDriver", "known_format", "qemu_owner"]
