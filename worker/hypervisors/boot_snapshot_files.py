"""The files of a boot snapshot, their names, and the manifest of what they were made from.

A boot snapshot of one (computer, image revision) is three files in the computer's vmpath, named
after VCL's domain file base name ``<short>_<imageid>-v<rev>`` (libvirt.pm's
get_domain_file_base_name), so they sort next to the overlay and the reaper can read the computer
and revision from the name:

* ``<base>.bootsnap.mem``: the domain's memory state, written by libvirt's ``virDomainSave``;
* ``<base>.bootsnap.<imagetype>``: the overlay exactly as it was when that state was saved;
* ``<base>.bootsnap.json``: the manifest, written last. Without it the other two are never used.

The manifest records what the pair was made from (the master's identity, the domain definition, the
guest's address and network, the libvirt/QEMU versions); a pair whose record differs from the
current load's is stale. Every file here is created ``O_CREAT|O_EXCL|O_NOFOLLOW`` with mode 0600
(:func:`create_exclusive`): a symlink planted at one of the names is never followed. Nothing here
talks to libvirt except reading its versions and eth0's network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from worker.hypervisors import naming
from worker.hypervisors.domain_xml import DomainSpec
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout
from worker.hypervisors.network import LibvirtNetwork

log = logging.getLogger(__name__)

SUFFIX = ".bootsnap"
MANIFEST_VERSION = 2  # 2: the address and network recorded, the state saved before post-load
PART = ".part"
FILE_MODE = 0o600
# Spec fields that do not change what the guest sees (metadata, the VNC console) or must change on
# every restore (the VM generation ID): a restore gives the domain the current values through the
# updated XML instead of invalidating the snapshot.
_NOT_ABI = ("description", "vnc_listen", "vnc_password", "genid")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class SnapshotFiles:
    memory: str
    disk: str
    manifest: str

    @property
    def finals(self) -> tuple[str, str, str]:
        # The manifest first: once it is gone the pair is never used, whatever else remains.
        return self.manifest, self.memory, self.disk

    def part(self, path: str) -> str:
        return path + PART

    def complete(self) -> bool:
        return all(os.path.isfile(p) for p in self.finals)

    def remove(self) -> list[str]:
        """Remove the set and any partial files of an interrupted save; the paths removed."""
        removed = []
        for path in (*self.finals, *(self.part(p) for p in self.finals)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        return removed


def snapshot_files(layout: Layout) -> SnapshotFiles:
    r = layout.reservation
    base = naming.domain_file_base_name(r.computer_short_name, r.image_id, r.imagerevision_revision)
    stem = os.path.join(layout.vm_path, base + SUFFIX)
    return SnapshotFiles(f"{stem}.mem", f"{stem}.{layout.datastore_imagetype}", f"{stem}.json")


def file_re(imagetype: str) -> re.Pattern[str]:
    """Names of boot snapshot files (and their partial files) in a vmpath, for the reaper."""
    return re.compile(
        r"^(?P<short>[^_/]+)_(?P<imageid>\d+)-v(?P<rev>\d+)"
        + re.escape(SUFFIX)
        + r"\.(?:mem|json|"
        + re.escape(imagetype)
        + r")(?:"
        + re.escape(PART)
        + r")?$"
    )


def _normalised(value: Any) -> Any:
    # Tuples become lists, as they come back from JSON: a record compares equal to its own reading.
    return json.loads(json.dumps(value, sort_keys=True))


def made_from(host: LibvirtHost, layout: Layout, spec: DomainSpec) -> dict[str, Any] | None:
    """What a snapshot of this load depends on; None when the master is not there (yet)."""
    try:
        st = os.stat(layout.master_path())
    except OSError:
        return None
    definition = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_ABI}
    r = layout.reservation
    eth0 = spec.nics[0] if spec.nics else None
    network: dict[str, Any] | None = None
    if eth0 is not None:
        # A network made again under the same name is another network (its UUID tells).
        net_uuid = LibvirtNetwork.lookup(host, eth0.source).uuid() if eth0.kind == "network" else None
        network = {"kind": eth0.kind, "source": eth0.source, "uuid": net_uuid, "mac": eth0.mac}
    libvirt_version, hypervisor_version = host.call(
        "getVersion", lambda c: (int(c.getLibVersion()), int(c.getVersion()))
    )
    record: dict[str, Any] = _normalised(
        {
            "computer_id": r.computer_id,
            "imagerevision_id": r.imagerevision_id,
            "image_name": layout.image_name,
            "master": {
                "path": os.path.realpath(layout.master_path()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino,
                "device": st.st_dev,
            },
            "definition": definition,
            # A restored guest keeps the address it had and is on the network it was: right only
            # while the computer's address and eth0's network are those of the save.
            "address": r.computer_private_ip,
            "network": network,
            # A save image is QEMU's migration stream: another QEMU may not read it.
            "libvirt_version": libvirt_version,
            "hypervisor_version": hypervisor_version,
        }
    )
    return record


def read_manifest(files: SnapshotFiles) -> dict[str, Any] | None:
    try:
        with open(files.manifest) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(files: SnapshotFiles, current: dict[str, Any] | None) -> str | None:
    """None when the pair may be restored for ``current``; else why not (for the log)."""
    if current is None:
        return "the master is missing"
    if not files.complete():
        return "no complete snapshot"
    manifest = read_manifest(files)
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        return "unreadable manifest"
    recorded = manifest.get("made_from", {})
    if recorded != current:
        changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        return f"made from another {', '.join(changed)}"
    sizes = manifest.get("bytes", {})
    for key, path in (("memory", files.memory), ("disk", files.disk)):
        if os.path.getsize(path) != sizes.get(key):
            return f"the {key} file changed size since the save"
    return None


def write_manifest(files: SnapshotFiles, record: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the manifest atomically (``.part``, fsync, rename): its presence means the pair is whole."""
    body = {
        "version": MANIFEST_VERSION,
        "made_from": record,
        "bytes": {"memory": os.path.getsize(files.memory), "disk": os.path.getsize(files.disk)},
        **extra,
    }
    tmp = files.part(files.manifest)
    fd = create_exclusive(tmp)
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, files.manifest)
    fsync_file(os.path.dirname(files.manifest))


def create_exclusive(path: str, mode: int = FILE_MODE) -> int:
    """A new file at ``path`` opened for writing: ``O_EXCL|O_NOFOLLOW`` (an existing file or a planted
    symlink raises ``FileExistsError``, never followed), ``mode`` whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_exclusive(src: str, dst: str, mode: int = FILE_MODE) -> None:
    """Copy ``src`` to a new file ``dst`` (:func:`create_exclusive`), fsynced; ``dst`` is removed when
    the copy fails (never when it existed before)."""
    fd = create_exclusive(dst, mode)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb", closefd=False) as fout:
            while chunk := fin.read(_COPY_CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        raise
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """fsync a file, or a directory (its entries: a rename made durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_computer_snapshots(vm_path: str, computer_short_name: str, imagetype: str) -> list[str]:
    """Every boot snapshot of one computer in ``vm_path`` (all revisions, partial files too), manifests
    first so that no half-removed set is ever restored; the paths removed. Maintenance calls this: a
    computer leaving its host must not leave its memory states behind until the reaper runs."""
    pattern = file_re(imagetype)
    ours = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(vm_path):
            found = pattern.match(entry.name)
            if (
                found is not None
                and found["short"] == computer_short_name
                and entry.is_file(follow_symlinks=False)
            ):
                ours.append(entry.path)
    removed = []
    for path in sorted(ours, key=lambda p: not p.endswith(".json")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def disk_cost(vm_path: str, imagetype: str = "qcow2") -> dict[str, int]:
    """Bytes allocated by boot snapshots in ``vm_path``: memory states, disks, and their count."""
    pattern = file_re(imagetype)
    out = {"memory_bytes": 0, "disk_bytes": 0, "snapshots": 0}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(vm_path):
            if not pattern.match(entry.name) or entry.name.endswith(PART):
                continue
            used = entry.stat().st_blocks * 512
            if entry.name.endswith(".mem"):
                out["memory_bytes"] += used
            elif entry.name.endswith(".json"):
                out["snapshots"] += 1
            else:
                out["disk_bytes"] += used
    return out


__all__ = [
    "FILE_MODE",
    "SnapshotFiles",
    "copy_exclusive",
    "create_exclusive",
    "disk_cost",
    "file_re",
    "fsync_file",
    "made_from",
    "read_manifest",
    "remove_computer_snapshots",
    "snapshot_files",
    "stale_reason",
    "write_manifest",
]
