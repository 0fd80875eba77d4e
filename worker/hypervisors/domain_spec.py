"""The :class:`DomainSpec` of a reservation (libvirt.pm:generate_domain_xml's decisions).

Disk bus and NIC model come from the master's saved XML; switches resolve to a libvirt network or a
host bridge; MACs are the computer's own unless the vmprofile asks for generated ones; the CPU is
:mod:`worker.hypervisors.cpu_model`'s for the domain type (TCG: a model the host's QEMU can emulate).

NICs, as libvirt.pm: eth0 on ``virtualswitch0``; the public NIC (eth1's MAC) on ``virtualswitch1``,
or, for an ``image.project`` without ``vcl`` in it (``hpc``), on the project's first libvirt network;
for any project but exactly ``vcl`` (``hpc``, ``vclhpc``) one more NIC, with a generated MAC, on each
other project network (see :func:`project_networks`). An empty ``virtualswitch0``/``1`` (which VCL
refuses) leaves that NIC out. A project network that is not active is a configuration error naming
the image, its project and the network (VCL would define the domain and fail to start it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.hypervisors import cpu_model, domain_xml, naming
from worker.hypervisors.errors import (
    ConfigurationError,
    InvalidInputError,
    LibvirtPermanentError,
    NetworkNotFoundError,
    PermanentError,
)
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout
from worker.hypervisors.network import network_states

log = logging.getLogger(__name__)

_BRIDGE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
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


def resolve_switch(host: LibvirtHost, name: str, row: str = "vmprofile") -> tuple[str, str]:
    """("network", name) for a libvirt network, ("bridge", name) for a host bridge; else
    :class:`NetworkNotFoundError` naming ``row`` (e.g. ``vmprofile 'x' virtualswitch0``)."""
    if host.has_network(name):
        return "network", name
    if _BRIDGE_NAME_RE.fullmatch(name) and os.path.exists(f"/sys/class/net/{name}/bridge"):
        return "bridge", name
    raise NetworkNotFoundError(
        f"unknown vmprofile switch {name!r}: neither a libvirt network nor a host bridge on {host.uri} "
        f"({row})"
    )


#: libvirt.pm: ``get_random_mac_address()`` for eth0/eth1 (QEMU's 52:54 prefix) and
#: ``get_random_mac_address('00:0c:29:')`` for the NICs a project network adds.
COMPUTER_MAC_PREFIX = "52:54:00"
PROJECT_MAC_PREFIX = "00:0c:29"


def _generate_mac(used: set[str], prefix: str = COMPUTER_MAC_PREFIX) -> str:
    """``<prefix>:xx:xx:xx`` not in ``used`` (256 attempts); added to ``used``."""
    rng = random.SystemRandom()
    for _ in range(256):
        mac = prefix + ":" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            used.add(mac)
            return mac
    raise PermanentError("could not generate a unique MAC address after 256 attempts")


@dataclass(frozen=True)
class ProjectNetworks:
    """The libvirt networks ``image.project`` gives a domain (libvirt.pm:generate_domain_xml)."""

    public: str | None  # carries the public NIC (eth1's MAC) instead of virtualswitch1
    extra: tuple[str, ...]  # one more NIC each, with a generated MAC

    @property
    def all(self) -> tuple[str, ...]:
        return ((self.public,) if self.public else ()) + self.extra


def project_networks(project: str, networks: Iterable[str], switches: Iterable[str]) -> ProjectNetworks:
    """libvirt.pm's use of ``image.project``. A project other than exactly ``vcl`` (case-insensitive)
    matches every libvirt network, other than the vmprofile's ``switches``, whose name contains the
    project or is contained in it; for a project without ``vcl`` in it (``hpc``) the first match
    carries the public NIC and the rest are extra NICs, otherwise (``vclhpc``) all are extra NICs.
    Matches are taken in name order (VCL's Perl hash order is random; with several matches VCL gives
    each the eth1 MAC and adds one of them twice, which is not repeated here)."""
    wanted = project.strip().lower()
    if wanted in ("", "vcl"):
        return ProjectNetworks(None, ())
    taken = {s.lower() for s in switches if s}
    matched = sorted(
        n for n in networks if n.lower() not in taken and (wanted in n.lower() or n.lower() in wanted)
    )
    if "vcl" not in wanted and matched:
        return ProjectNetworks(matched[0], tuple(matched[1:]))
    return ProjectNetworks(None, tuple(matched))


def _project_networks(host: LibvirtHost, layout: Layout) -> ProjectNetworks:
    r = layout.reservation
    vp = r.vmprofile
    if r.image_project.strip().lower() in ("", "vcl"):
        return ProjectNetworks(None, ())  # no network listing needed
    states = network_states(host)
    chosen = project_networks(r.image_project, states, (vp.virtualswitch0, vp.virtualswitch1))
    for name in chosen.all:
        if not states[name]:
            raise ConfigurationError(
                f"libvirt network {name!r} on {host.uri} is not active, and image {r.image_name!r} "
                f"(image.project {r.image_project!r}) gets a NIC on it because the project and the "
                f"network's name contain one another: start it (virsh net-start {name}) or rename it"
            )
    if not chosen.all:  # VCL: the vmprofile's NICs only, silently
        log.info(
            "image.project %r of image %r matches no libvirt network on %s: the NICs of vmprofile %r only",
            *(r.image_project, r.image_name, host.uri, vp.profile_name),
        )
    return chosen


def _nics(host: LibvirtHost, layout: Layout, model: str) -> tuple[domain_xml.NicSpec, ...]:
    r = layout.reservation
    vp = r.vmprofile
    row = f"vmprofile {vp.profile_name!r}"
    used: set[str] | None = None  # listed only when a MAC has to be generated

    def new_mac(prefix: str = COMPUTER_MAC_PREFIX) -> str:
        nonlocal used
        if used is None:
            used = host.used_macs() | layout.computer_macs
        return _generate_mac(used, prefix)

    def own(n: int, kind: str, source: str) -> domain_xml.NicSpec:
        generated, configured = (vp.eth0_generated, r.eth0_mac) if n == 0 else (vp.eth1_generated, r.eth1_mac)
        made = generated or not configured
        mac = new_mac() if made else naming.normalize_mac(configured or "", f"computer.eth{n}macaddress")
        return domain_xml.NicSpec(kind, source, mac, model, computer_nic=f"eth{n}", generated=made)

    project = _project_networks(host, layout)
    nics = []
    if vp.virtualswitch0:
        nics.append(own(0, *resolve_switch(host, vp.virtualswitch0, f"{row} virtualswitch0")))
    if project.public:
        nics.append(own(1, "network", project.public))
    elif vp.virtualswitch1:
        nics.append(own(1, *resolve_switch(host, vp.virtualswitch1, f"{row} virtualswitch1")))
    nics.extend(
        domain_xml.NicSpec("network", name, new_mac(PROJECT_MAC_PREFIX), model) for name in project.extra
    )
    return tuple(nics)


def cpu_for(host: LibvirtHost, domain_type: str) -> cpu_model.CpuSpec:
    """:func:`cpu_model.cpu_spec` with, under TCG, the models libvirt's domain capabilities
    (``virConnectGetDomainCapabilities``) list as usable; a driver without them gets ``qemu64``."""
    if domain_type != "qemu":
        return cpu_model.cpu_spec(domain_type)

    def query(conn: Any) -> str:
        return str(conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0))

    try:
        caps = host.call("getDomainCapabilities(qemu, x86_64)", query)
    except LibvirtPermanentError as exc:
        log.warning(
            "no domain capabilities from %s (%s): TCG CPU model %s",
            host.uri,
            exc,
            cpu_model.TCG_FALLBACK_MODEL,
        )
        return cpu_model.cpu_spec(domain_type)
    return cpu_model.cpu_spec(domain_type, cpu_model.usable_models(domain_xml.parse_xml(caps)))


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def check_vnc(listen: str, password: str | None) -> None:
    """VNC listens on an IP address; off loopback only with a password (the guest's console would
    otherwise be open to anyone who reaches the host). The password is never put in a message."""
    try:
        address = ipaddress.ip_address(listen.strip())
    except ValueError as exc:
        raise InvalidInputError(
            f"VNC listen address {listen!r} is not an IP address (VCL_VNC_LISTEN)"
        ) from exc
    if not address.is_loopback and not password:
        raise InvalidInputError(
            f"VNC listen address {listen} is not loopback and no VNC password is set (VCL_VNC_PASSWORD)"
        )


def domain_spec(
    host: LibvirtHost,
    layout: Layout,
    *,
    domain_type: str,
    disk_driver_name: str,
    vnc_listen: str,
    vnc_password: str | None = None,
) -> domain_xml.DomainSpec:
    check_vnc(vnc_listen, vnc_password)
    r = layout.reservation
    # The master's saved XML (when there is one that parses) gives the disk bus and NIC model.
    master = domain_xml.ParsedDomain.parse_or_none(_read(layout.master_xml_path()))
    bus = (master.disk_bus if master else None) or domain_xml.DEFAULT_DISK_BUS
    model = (master.nic_model if master else None) or domain_xml.DEFAULT_NIC_MODEL
    nics = _nics(host, layout, model)
    os.makedirs(layout.vm_path, mode=0o755, exist_ok=True)
    return domain_xml.DomainSpec(
        name=layout.domain_name,
        uuid=domain_xml.computer_uuid(r.computer_id, r.computer_hostname),
        domain_type=domain_type,
        memory_mib=domain_xml.memory_mib(r.minram_mb),
        vcpus=max(r.image_minprocnumber or 1, 1),
        cpu=cpu_for(host, domain_type),
        disk_path=layout.cow_path,
        disk_format=layout.datastore_imagetype,
        disk_driver_name=disk_driver_name,
        disk_bus=bus,
        disk_cache=None if is_path_on_local_disk(layout.vm_path) else "none",
        clock_offset="localtime" if "windows" in r.os_type else "utc",
        description=domain_xml.description_text(
            image_prettyname=r.image_prettyname,
            image_name=layout.image_name,
            load_time=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            management_node=r.management_node_short_name,
            request_id=r.request_id,
            reservation_id=r.reservation_id,
        ),
        vnc_listen=vnc_listen,
        vnc_password=vnc_password or None,
        nics=nics,
        genid=str(uuid.uuid4()),  # a new VM generation ID on every load, cold or restored
    )


__all__ = [
    "COMPUTER_MAC_PREFIX",
    "PROJECT_MAC_PREFIX",
    "ProjectNetworks",
    "check_vnc",
    "cpu_for",
    "domain_spec",
    "is_path_on_local_disk",
    "project_networks",
    "resolve_switch",
]
