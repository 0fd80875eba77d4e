"""LibvirtProvisioner: libvirt.pm's public methods on top of libvirt-python and qemu-img.

The only input is a :class:`Reservation`; nothing here imports Celery or the DB layer. Progress is
reported through a callback (the task turns it into ``computerloadlog`` rows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from worker.config import Settings, get_settings
from worker.failpoints import failpoint
from worker.hypervisors import domain_xml, naming, qemuimg
from worker.hypervisors.drivers.base import Driver, select_driver
from worker.hypervisors.drivers.kvm import MASTER_MODE
from worker.hypervisors.errors import (
    AmbiguousDomainError,
    DomainNotFoundError,
    ImageExistsError,
    InvalidInputError,
    PermanentError,
)
from worker.hypervisors.guest import Guest, SnapshotInfo, require_guest
from worker.hypervisors.host import LibvirtHost, get_host
from worker.reservation import Reservation

log = logging.getLogger(__name__)

_NETWORK_CHECK_STATES = re.compile(r"(new|reload|reinstall|test)")
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "afs",
    "cifs",
    "smb3",
    "smbfs",
    "glusterfs",
    "ceph",
    "fuse.sshfs",
    "9p",
    "lustre",
    "gpfs",
    "ocfs2",
    "gfs2",
    "fuse.glusterfs",
    "virtiofs",
}


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    message: str = ""
    percent: float | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class LoadResult:
    domain_name: str
    cow_path: str
    master_path: str
    domain_type: str
    master_copied: bool
    timings: Mapping[str, float]


@dataclass(frozen=True)
class CaptureResult:
    new_image_name: str
    domain_name: str
    master_path: str
    master_size_bytes: int
    repository_path: str | None
    timings: Mapping[str, float]


class NodeStatus(str, Enum):  # noqa: UP042 (API fixed as str+Enum)
    READY = "READY"
    POST_LOAD = "POST_LOAD"
    RELOAD = "RELOAD"


def is_path_on_local_disk(path: str) -> bool:
    """False for network file systems (NFS/AFS/CIFS/...) and for paths that do not exist (VCL)."""
    if not os.path.exists(path):
        return False
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return True
    return fstype not in _NETWORK_FS


class LibvirtProvisioner:
    def __init__(
        self, reservation: Reservation, settings: Settings | None = None, host: LibvirtHost | None = None
    ) -> None:
        self.reservation = reservation
        self.settings = settings or get_settings()
        self.host = host or get_host(self.settings.libvirt_uri)
        self.driver: Driver | None = None
        self.master_copied = False
        self.master_path: str | None = None
        self.guest_check: Callable[[LibvirtProvisioner], NodeStatus] | None = None
        self.post_load_hook: Callable[[LibvirtProvisioner], None] | None = None
        self._progress: ProgressCallback | None = None
        self._image_name_override: str | None = None
        self._domain_name: str | None = None
        self._macs: dict[int, str] = {}
        self._validate_reservation()

    # ------------------------------------------------------------------ input validation
    def _validate_reservation(self) -> None:
        r = self.reservation
        vp = r.vmprofile
        naming.validate_name(r.imagerevision_imagename, "image name (imagerevision.imagename)")
        naming.validate_name(r.computer_short_name, "computer short name")
        naming.validate_name(vp.datastore_imagetype, "datastore image type")
        if not re.fullmatch(r"[a-z0-9]+", vp.datastore_imagetype):
            raise InvalidInputError(f"invalid datastore image type {vp.datastore_imagetype!r}")
        if not re.fullmatch(r"[a-z0-9]+", vp.repository_imagetype or "qcow2"):
            raise InvalidInputError(f"invalid repository image type {vp.repository_imagetype!r}")
        naming.validate_path(vp.datastore_path, "vmprofile.datastorepath")
        naming.validate_path(vp.vm_path or vp.datastore_path, "vmprofile.vmpath")
        if vp.repository_path:
            naming.validate_path(vp.repository_path, "vmprofile.repositorypath")
        for label, mac in (("computer.eth0macaddress", r.eth0_mac), ("computer.eth1macaddress", r.eth1_mac)):
            if mac:
                naming.normalize_mac(mac, label)

    # ------------------------------------------------------------------ driver
    def initialize(self) -> None:
        """Select the driver (first probe that succeeds); check vmprofile switches for load states."""
        self.driver = select_driver(self.host)
        if _NETWORK_CHECK_STATES.search(self.reservation.request_state or ""):
            for sw in self._switch_names():
                self.resolve_switch(sw)

    def _driver(self) -> Driver:
        if self.driver is None:
            self.initialize()
        assert self.driver is not None
        return self.driver

    def get_driver_name(self) -> str:
        return self._driver().name

    def emit(self, stage: str, message: str = "", percent: float | None = None) -> None:
        if self._progress is not None:
            try:
                self._progress(ProgressEvent(stage, message, percent))
            except Exception:  # a broken progress sink must not fail provisioning
                log.exception("progress callback failed for stage %s", stage)

    # ------------------------------------------------------------------ names and paths
    @property
    def datastore_imagetype(self) -> str:
        return self.reservation.vmprofile.datastore_imagetype

    @property
    def datastore_path(self) -> str:
        return os.path.normpath(self.reservation.vmprofile.datastore_path)

    @property
    def vm_path(self) -> str:
        vp = self.reservation.vmprofile
        return os.path.normpath(vp.vm_path or vp.datastore_path)

    def get_image_name(self) -> str:
        return self._image_name_override or self.reservation.imagerevision_imagename

    def _name(self, image_name: str | None) -> str:
        return naming.validate_name(image_name) if image_name is not None else self.get_image_name()

    def get_domain_name(self) -> str:
        if self.reservation.request_state in ("image", "checkpoint"):
            return self.get_active_domain_name()
        if self._domain_name is None:
            r = self.reservation
            self._domain_name = naming.domain_name(
                r.computer_short_name, r.computer_id, r.image_prettyname, r.image_id, r.imagerevision_revision
            )
        return self._domain_name

    def get_domain_file_base_name(self) -> str:
        r = self.reservation
        return naming.domain_file_base_name(r.computer_short_name, r.image_id, r.imagerevision_revision)

    def get_copy_on_write_file_path(self) -> str:
        return naming.copy_on_write_file_path(
            self.vm_path, self.get_domain_file_base_name(), self.datastore_imagetype
        )

    def get_master_image_directory_path(self) -> str:
        return self.datastore_path

    def get_master_image_file_path(self, image_name: str | None = None) -> str:
        return naming.master_image_file_path(
            self.datastore_path, self._name(image_name), self.datastore_imagetype
        )

    def get_master_xml_file_path(self, image_name: str | None = None) -> str:
        return naming.master_xml_file_path(self.datastore_path, self._name(image_name))

    def get_repository_image_directory_path(self, image_name: str | None = None) -> str | None:
        return naming.repository_image_directory_path(
            self.reservation.vmprofile.repository_path, self._name(image_name)
        )

    def get_repository_image_file_path(self, image_name: str | None = None) -> str | None:
        vp = self.reservation.vmprofile
        return naming.repository_image_file_path(
            vp.repository_path, self._name(image_name), vp.repository_imagetype
        )

    def get_repository_xml_file_path(self, image_name: str | None = None) -> str | None:
        return naming.repository_xml_file_path(
            self.reservation.vmprofile.repository_path, self._name(image_name)
        )

    def get_new_image_name(self) -> str:
        r = self.reservation
        return naming.new_image_name(r.os_name, r.image_prettyname, r.image_id, r.imagerevision_revision)

    def get_image_repository_search_paths(self, image_name: str | None = None) -> list[str]:
        return naming.image_repository_search_paths(
            self.reservation.vmprofile.repository_path, self._name(image_name)
        )

    def find_repository_image_file_paths(self, image_name: str | None = None) -> list[str]:
        return naming.find_repository_image_file_paths(
            self.reservation.vmprofile.repository_path, self._name(image_name)
        )

    # ------------------------------------------------------------------ image facts
    def does_image_exist(self, image_name: str | None = None) -> bool:
        name = self._name(image_name)
        if os.path.isfile(self.get_master_image_file_path(name)):
            return True
        return bool(self.find_repository_image_file_paths(name))

    def get_image_size_bytes(self, image_name: str | None = None) -> int:
        """Allocated bytes of the master (VCL: stat blocks x blocksize), else the repository files' sum."""
        name = self._name(image_name)
        master = self.get_master_image_file_path(name)
        paths = [master] if os.path.isfile(master) else self.find_repository_image_file_paths(name)
        total = 0
        for p in paths:
            st = os.stat(p)
            total += st.st_blocks * 512
        return total

    def get_image_size(self, image_name: str | None = None) -> int:
        return self.get_image_size_bytes(image_name) // (1024 * 1024)

    # ------------------------------------------------------------------ node facts
    def get_node_network_info(self) -> list[str]:
        return self.host.network_names()

    def get_node_interface_info(self) -> list[str]:
        return self.host.interface_names()

    def _switch_names(self) -> list[str]:
        vp = self.reservation.vmprofile
        return [s for s in (vp.virtualswitch0, vp.virtualswitch1) if s]

    def resolve_switch(self, name: str) -> tuple[str, str]:
        """("network", name) for a libvirt network, ("bridge", name) for a host bridge."""
        if self.host.has_network(name):
            return "network", name
        if re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", name) and os.path.exists(f"/sys/class/net/{name}/bridge"):
            return "bridge", name
        raise InvalidInputError(
            f"unknown vmprofile switch {name!r}: "
            f"neither a libvirt network nor a host bridge on {self.host.uri}"
        )

    # ------------------------------------------------------------------ domain lookups
    def _guests(self) -> list[Guest]:
        return [Guest(self.host, d) for d in self.host.list_domains()]

    def get_domain_info(self) -> dict[str, dict[str, Any]]:
        """{name: {state, id, power_status, ...}} for every defined domain (virsh list --all)."""
        return {g.name: g.info() for g in self._guests()}

    def domain_exists(self, domain_name: str | None = None) -> bool:
        return self.host.lookup_domain(domain_name or self.get_domain_name()) is not None

    def _guest(self, domain_name: str | None) -> Guest:
        return require_guest(self.host, domain_name or self.get_domain_name())

    def get_domain_xml_string(self, domain_name: str | None = None) -> str:
        return self._guest(domain_name).xml()

    def get_domain_xml(self, domain_name: str | None = None) -> str:
        return self.get_domain_xml_string(domain_name)

    def get_domain_disk_file_paths(self, domain_name: str | None = None) -> list[str]:
        return self._guest(domain_name).disk_paths()

    def get_domain_mac_addresses(self, domain_name: str | None = None) -> list[str]:
        return self._guest(domain_name).mac_addresses()

    def get_active_domain_name(self) -> str:
        """The unique domain whose interface MACs include the computer's eth0/eth1 MAC."""
        r = self.reservation
        macs = {naming.normalize_mac(m) for m in (r.eth0_mac, r.eth1_mac) if m}
        if not macs:
            raise InvalidInputError(
                f"computer {r.computer_hostname!r} has no MAC address to find its domain by"
            )
        matches = [g.name for g in self._guests() if macs & set(g.mac_addresses())]
        if not matches:
            raise DomainNotFoundError(f"no domain on {self.host.uri} has MAC {', '.join(sorted(macs))}")
        if len(matches) > 1:
            raise AmbiguousDomainError(
                f"{len(matches)} domains match MAC {', '.join(sorted(macs))}: {matches}"
            )
        return matches[0]

    # ------------------------------------------------------------------ power
    def power_status(self, domain_name: str | None = None) -> str | None:
        dom = self.host.lookup_domain(domain_name or self.get_domain_name())
        return None if dom is None else Guest(self.host, dom).power_status()

    def power_on(self, domain_name: str | None = None) -> bool:
        self._guest(domain_name).start()
        return True

    def power_off(self, domain_name: str | None = None) -> bool:
        """Hard stop (virsh destroy), as VCL."""
        self._guest(domain_name).destroy()
        return True

    def power_reset(self, domain_name: str | None = None) -> bool:
        g = self._guest(domain_name)
        g.destroy()
        g.start()
        return True

    def shutdown(self, domain_name: str | None = None) -> bool:
        """Graceful shutdown with re-send, then destroy after ``settings.shutdown_timeout``."""
        return self._guest(domain_name).power_off(
            self.settings.shutdown_timeout, self.settings.shutdown_retry_interval
        )

    def wait_for_power_off(
        self, total: float = 300, delay: float = 15, domain_name: str | None = None
    ) -> bool:
        return self._guest(domain_name).wait_for_power_off(total, min(delay, 1.0))

    # ------------------------------------------------------------------ snapshots
    def get_snapshot_info(self, domain_name: str | None = None) -> dict[str, SnapshotInfo]:
        return self._guest(domain_name).snapshot_info()

    def create_snapshot(self, domain_name: str | None = None, description: str | None = None) -> str:
        g = self._guest(domain_name)
        name = naming.validate_name(description or g.name, "snapshot name")
        return g.create_snapshot(name, description or "")

    def delete_snapshot(self, domain_name: str | None, snapshot: str) -> bool:
        self._guest(domain_name).delete_snapshot(snapshot, children=True)
        return True

    # ------------------------------------------------------------------ delete
    def delete_domain(self, domain_name: str) -> bool:
        """Power off, delete snapshots, delete disks (only ``<short>_*`` outside image), undefine."""
        dom = self.host.lookup_domain(domain_name)
        if dom is None:
            return True
        g = Guest(self.host, dom)
        if g.power_status() != "off":
            g.destroy()
        g.delete_all_snapshots()
        image_state = self.reservation.request_state == "image"
        m = re.match(r"^([^:_]+)[:_]", domain_name)
        computer = m.group(1) if m else None
        if image_state or computer:
            for path in g.disk_paths():
                if not image_state and not naming.is_computer_disk(path, computer or ""):
                    log.warning("not deleting %s of %s: not named %s_*", path, domain_name, computer)
                    continue
                try:
                    os.unlink(path)
                    log.info("deleted disk %s of %s", path, domain_name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("could not delete %s: %s", path, exc)
        g.undefine()
        return True

    def delete_existing_domains(self) -> list[str]:
        short = self.reservation.computer_short_name
        removed = []
        for g in self._guests():
            if naming.is_computer_domain(g.name, short):
                self.delete_domain(g.name)
                removed.append(g.name)
        # a COW of this computer left by a failed load (no domain) is removed by pre_define itself
        return removed

    def unload(self) -> list[str]:
        return self.delete_existing_domains()

    def post_maintenance_action(self) -> list[str]:
        """Delete this computer's domains and overlays; the DB side (noimage, vmhostid NULL) is the task's."""
        return self.delete_existing_domains()

    # ------------------------------------------------------------------ XML generation
    def _read_master_xml(self) -> str | None:
        path = self.get_master_xml_file_path()
        try:
            with open(path) as fh:
                return fh.read()
        except OSError:
            return None

    def _defined_macs(self) -> set[str]:
        macs: set[str] = set()
        for g in self._guests():
            with contextlib.suppress(PermanentError):
                macs.update(g.mac_addresses())
        return macs

    def generate_mac(self) -> str:
        """``52:54:00:xx:xx:xx`` not used by any defined domain (256 attempts)."""
        used = self._defined_macs() | set(self._macs.values())
        rng = random.SystemRandom()
        for _ in range(256):
            mac = "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
            if mac not in used:
                return mac
        raise PermanentError("could not generate a unique MAC address after 256 attempts")

    def _mac_for(self, index: int) -> str:
        if index in self._macs:
            return self._macs[index]
        r = self.reservation
        vp = r.vmprofile
        generated = vp.eth0_generated if index == 0 else vp.eth1_generated
        configured = r.eth0_mac if index == 0 else r.eth1_mac
        if generated or not configured:
            mac = self.generate_mac()
        else:
            mac = naming.normalize_mac(configured, f"computer.eth{index}macaddress")
        self._macs[index] = mac
        return mac

    def generate_domain_xml(self) -> str:
        r = self.reservation
        driver = self._driver()
        master_xml = self._read_master_xml()
        bus = domain_xml.master_xml_disk_bus(master_xml) or domain_xml.DEFAULT_DISK_BUS
        model = domain_xml.master_xml_interface_model(master_xml) or domain_xml.DEFAULT_NIC_MODEL
        nics = []
        vp = r.vmprofile
        for index, switch in enumerate((vp.virtualswitch0, vp.virtualswitch1)):
            if not switch:
                continue
            kind, source = self.resolve_switch(switch)
            nics.append(domain_xml.NicSpec(kind, source, self._mac_for(index), model))
        os.makedirs(self.vm_path, mode=0o755, exist_ok=True)
        spec = domain_xml.DomainSpec(
            name=self.get_domain_name(),
            uuid=domain_xml.computer_uuid(r.computer_id, r.computer_hostname),
            domain_type=driver.get_domain_type(self.host),
            memory_mib=domain_xml.memory_mib(r.minram_mb),
            vcpus=max(r.image_minprocnumber or 1, 1),
            disk_path=self.get_copy_on_write_file_path(),
            disk_format=self.datastore_imagetype,
            disk_driver_name=driver.get_disk_driver_name(),
            disk_bus=bus,
            disk_cache=None if is_path_on_local_disk(self.vm_path) else "none",
            clock_offset="localtime" if "windows" in r.os_type else "utc",
            description=domain_xml.description_text(
                r.image_prettyname,
                self.get_image_name(),
                datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                r.management_node_short_name,
                r.request_id,
                r.reservation_id,
            ),
            vnc_listen=self.settings.vnc_listen,
            nics=tuple(nics),
        )
        return domain_xml.build_domain_xml(spec)

    def define_domain(self, xml: str, autostart: bool = True) -> Guest:
        g = Guest(self.host, self.host.define_xml(xml))
        if autostart:
            try:
                g.set_autostart(True)
            except PermanentError as exc:  # VCL: autostart failure is only logged
                log.warning("autostart of %s failed: %s", g.name, exc)
        return g

    # ------------------------------------------------------------------ load
    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        self._progress = progress
        timings: dict[str, float] = {}
        t0 = time.monotonic()

        def mark(step: str, since: float) -> float:
            now = time.monotonic()
            timings[step] = round(now - since, 3)
            return now

        try:
            driver = self._driver()
            domain = self.get_domain_name()
            self.emit("startload", f"{self.reservation.computer_short_name} {self.get_image_name()}")
            t = time.monotonic()
            failpoint("core.before_delete_existing")
            self.delete_existing_domains()
            t = mark("delete_existing_domains", t)
            xml = self.generate_domain_xml()
            xml = driver.extend_domain_xml(self, xml)
            t = mark("generate_domain_xml", t)
            cow = self.get_copy_on_write_file_path()
            created_cow = False
            try:
                failpoint("core.before_pre_define")
                driver.pre_define(self)
                created_cow = True
                t = mark("pre_define", t)
                self.emit("transfervm", "performed libvirt driver tasks before defining domain")
                failpoint("core.before_define")
                guest = self.define_domain(xml, autostart=True)
                failpoint("core.after_define")
                t = mark("define", t)
                self.emit("vmsetupconfig", f"defined domain {domain}")
                guest.start()
                failpoint("core.after_start")
                t = mark("power_on", t)
            except BaseException:
                # remove only what this attempt created (the COW, the definition); never the master
                if created_cow:
                    with contextlib.suppress(Exception):
                        self.delete_domain(domain)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(cow)
                raise
            self.emit("startvm", f"started domain {domain}")
            if self.post_load_hook is not None:
                self.post_load_hook(self)
                mark("post_load", t)
            timings["total"] = round(time.monotonic() - t0, 3)
            return LoadResult(
                domain_name=domain,
                cow_path=cow,
                master_path=self.master_path or self.get_master_image_file_path(),
                domain_type=driver.get_domain_type(self.host),
                master_copied=self.master_copied,
                timings=timings,
            )
        finally:
            self._progress = None

    # ------------------------------------------------------------------ capture
    def capture(self, progress: ProgressCallback | None = None) -> CaptureResult:
        self._progress = progress
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            driver = self._driver()
            new_name = naming.validate_name(self.get_new_image_name(), "new image name")
            domain = self.get_active_domain_name()
            vp = self.reservation.vmprofile
            master = naming.master_image_file_path(self.datastore_path, new_name, self.datastore_imagetype)
            repo_file = self.get_repository_image_file_path(new_name)
            if os.path.exists(master):
                raise ImageExistsError(
                    f"capture target master {master} already exists; refusing to overwrite it"
                )
            if repo_file and os.path.exists(repo_file):
                raise ImageExistsError(f"capture target repository file {repo_file} already exists")
            guest = require_guest(self.host, domain)
            dom_xml = guest.xml(inactive=True)
            self.emit("capture", f"shutting down {domain}", 0.0)
            t = time.monotonic()
            guest.power_off(self.settings.shutdown_timeout, self.settings.shutdown_retry_interval)
            timings["shutdown"] = round(time.monotonic() - t, 3)
            disks = guest.disk_paths()
            if not disks:
                raise PermanentError(f"domain {domain} has no disk to capture")
            if len(disks) > 1:
                log.warning("domain %s has %d disks; only %s is captured", domain, len(disks), disks[0])
            t = time.monotonic()
            lock_timeout = self.settings.qemu_img_convert_timeout
            with driver.image_lock(self, new_name, lock_timeout):
                if os.path.exists(master):
                    raise ImageExistsError(
                        f"capture target master {master} already exists; refusing to overwrite it"
                    )
                driver.copy_virtual_disk(
                    disks[0],
                    master,
                    self.datastore_imagetype,
                    progress=lambda pct: self.emit("capture", f"capturing {domain}", pct),
                    timeout=self.settings.qemu_img_convert_timeout,
                    mode=MASTER_MODE,
                )
                _write_text_atomic(naming.master_xml_file_path(self.datastore_path, new_name), dom_xml)
            timings["copy_to_master"] = round(time.monotonic() - t, 3)
            repo_written: str | None = None
            if repo_file:
                t = time.monotonic()
                driver.copy_virtual_disk(
                    master,
                    repo_file,
                    vp.repository_imagetype,
                    compat="0.10",
                    progress=lambda pct: self.emit("capture", f"copying {new_name} to the repository", pct),
                    timeout=self.settings.qemu_img_convert_timeout,
                )
                repo_xml = naming.repository_xml_file_path(vp.repository_path, new_name)
                if repo_xml:
                    _write_text_atomic(repo_xml, dom_xml)
                repo_written = repo_file
                timings["copy_to_repository"] = round(time.monotonic() - t, 3)
            self._image_name_override = new_name
            if self.reservation.request_state == "image":
                self.delete_domain(domain)
            timings["total"] = round(time.monotonic() - t0, 3)
            self.emit("capture", f"captured {new_name}", 100.0)
            return CaptureResult(
                new_image_name=new_name,
                domain_name=domain,
                master_path=master,
                master_size_bytes=os.stat(master).st_size,
                repository_path=repo_written,
                timings=timings,
            )
        finally:
            self._progress = None

    # ------------------------------------------------------------------ node status
    def node_status(self) -> NodeStatus:
        """RELOAD unless this revision's domain exists with its COW backed by this revision's master."""
        r = self.reservation
        name = naming.domain_name(
            r.computer_short_name, r.computer_id, r.image_prettyname, r.image_id, r.imagerevision_revision
        )
        dom = self.host.lookup_domain(name)
        if dom is None:
            return NodeStatus.RELOAD
        g = Guest(self.host, dom)
        cow = self.get_copy_on_write_file_path()
        if cow not in g.disk_paths() or not os.path.exists(cow):
            return NodeStatus.RELOAD
        try:
            inf = qemuimg.info(cow, timeout=self.settings.qemu_img_info_timeout)
        except PermanentError:
            return NodeStatus.RELOAD
        master = self.get_master_image_file_path()
        backing = inf.full_backing_filename or inf.backing_filename
        if not backing or os.path.realpath(backing) != os.path.realpath(master):
            return NodeStatus.RELOAD
        if g.power_status() != "on":
            return NodeStatus.POST_LOAD
        if self.guest_check is not None:
            return self.guest_check(self)
        return NodeStatus.READY


def _write_text_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    part = f"{path}.part"
    with open(part, "w") as fh:
        fh.write(text)
    os.replace(part, path)


__all__ = [
    "CaptureResult",
    "LibvirtProvisioner",
    "LoadResult",
    "NodeStatus",
    "ProgressCallback",
    "ProgressEvent",
    "is_path_on_local_disk",
]
