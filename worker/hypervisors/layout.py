"""Where one reservation's domain, overlay, master and repository copies live (libvirt.pm 1.2).

Every value that comes from the VCL database and ends up in a path or in libvirt XML is validated
when the :class:`Layout` is built, before any file or domain is touched: names, MACs, and the
vmprofile's datastore, vmpath and repository, which must resolve (symlinks, ``..``) under the
configured roots (``VCL_ALLOWED_ROOTS``). The layout then uses the resolved paths, so what was
checked is what is used. Nothing here talks to libvirt; the only file-system access is the
master/repository search VCL's rules require.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from worker.hypervisors import naming
from worker.hypervisors.drivers.base import MasterImage
from worker.hypervisors.errors import InvalidInputError
from worker.hypervisors.roots import under_roots
from worker.reservation import Reservation

_IMAGETYPE_RE = re.compile(r"[a-z0-9]+")


def _validate(r: Reservation) -> None:
    vp = r.vmprofile
    naming.validate_name(r.imagerevision_imagename, "image name (imagerevision.imagename)")
    naming.validate_name(r.computer_short_name, "computer short name")
    naming.validate_name(vp.datastore_imagetype, "datastore image type")
    if not _IMAGETYPE_RE.fullmatch(vp.datastore_imagetype):
        raise InvalidInputError(f"invalid datastore image type {vp.datastore_imagetype!r}")
    if not _IMAGETYPE_RE.fullmatch(vp.repository_imagetype or "qcow2"):
        raise InvalidInputError(f"invalid repository image type {vp.repository_imagetype!r}")
    naming.validate_path(vp.datastore_path, "vmprofile.datastorepath")
    naming.validate_path(vp.vm_path or vp.datastore_path, "vmprofile.vmpath")
    if vp.repository_path:
        naming.validate_path(vp.repository_path, "vmprofile.repositorypath")
    for label, mac in (("computer.eth0macaddress", r.eth0_mac), ("computer.eth1macaddress", r.eth1_mac)):
        if mac:
            naming.normalize_mac(mac, label)


def _rooted(r: Reservation, roots: Sequence[str]) -> tuple[str, str, str | None]:
    """(datastore, vmpath, repository) resolved, each under ``roots`` or InvalidInputError."""
    vp = r.vmprofile
    ds = under_roots(vp.datastore_path, roots, "vmprofile.datastorepath")
    vm = under_roots(vp.vm_path or vp.datastore_path, roots, "vmprofile.vmpath")
    repo = under_roots(vp.repository_path, roots, "vmprofile.repositorypath") if vp.repository_path else None
    return ds, vm, repo


class Layout:
    """Names and paths of one reservation; ``image_name`` arguments default to its revision's.

    ``roots`` are the allowed roots (``Settings.roots``, already resolved): every vmprofile path
    must resolve under one of them."""

    def __init__(self, reservation: Reservation, *, roots: Sequence[str]) -> None:
        _validate(reservation)
        self.roots = tuple(roots)
        self.datastore_path, self.vm_path, self.repository_path = _rooted(reservation, self.roots)
        r = self.reservation = reservation
        vp = r.vmprofile
        self.image_name = r.imagerevision_imagename
        self.datastore_imagetype = vp.datastore_imagetype
        # the domain of this revision (the load's); image/checkpoint find theirs by MAC instead
        self.domain_name = naming.domain_name(
            r.computer_short_name, r.computer_id, r.image_prettyname, r.image_id, r.imagerevision_revision
        )
        base = naming.domain_file_base_name(r.computer_short_name, r.image_id, r.imagerevision_revision)
        self.cow_path = naming.copy_on_write_file_path(self.vm_path, base, self.datastore_imagetype)
        self.new_image_name = naming.new_image_name(
            r.os_name, r.image_prettyname, r.image_id, r.imagerevision_revision
        )

    def _name(self, image_name: str | None) -> str:
        return self.image_name if image_name is None else naming.validate_name(image_name)

    @property
    def computer_macs(self) -> set[str]:
        r = self.reservation
        return {naming.normalize_mac(m) for m in (r.eth0_mac, r.eth1_mac) if m}

    @property
    def switches(self) -> list[str]:
        vp = self.reservation.vmprofile
        return [s for s in (vp.virtualswitch0, vp.virtualswitch1) if s]

    # ------------------------------------------------------------------ masters and repository
    def master_image(self, image_name: str | None = None) -> MasterImage:
        return MasterImage(
            image_name=self._name(image_name),
            datastore_path=self.datastore_path,
            datastore_imagetype=self.datastore_imagetype,
            repository_path=self.repository_path,
            windows="windows" in self.reservation.os_type.lower(),
        )

    def master_path(self, image_name: str | None = None) -> str:
        return self.master_image(image_name).path()

    def master_xml_path(self, image_name: str | None = None) -> str:
        return naming.master_xml_file_path(self.datastore_path, self._name(image_name))

    def repository_file(self, image_name: str | None = None) -> str | None:
        vp = self.reservation.vmprofile
        return naming.repository_image_file_path(
            self.repository_path, self._name(image_name), vp.repository_imagetype
        )

    def repository_xml(self, image_name: str | None = None) -> str | None:
        return naming.repository_xml_file_path(self.repository_path, self._name(image_name))

    # ------------------------------------------------------------------ image facts
    def image_exists(self, image_name: str | None = None) -> bool:
        master = self.master_image(image_name)
        return os.path.isfile(master.path()) or bool(master.repository_files())

    def image_size_bytes(self, image_name: str | None = None) -> int:
        """Allocated bytes of the master (VCL: stat blocks x 512), else the repository files' sum."""
        master = self.master_image(image_name)
        path = master.path()
        paths = [path] if os.path.isfile(path) else master.repository_files()
        return sum(os.stat(p).st_blocks * 512 for p in paths)


__all__ = ["Layout"]
