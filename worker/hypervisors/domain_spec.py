"""The :class:`DomainSpec` of a reservation (libvirt.pm:generate_domain_xml's decisions).

Disk bus and NIC model come from the master's saved XML; switches resolve to a libvirt network or a
host bridge; MACs are the computer's own unless the vmprofile asks for generated ones.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import uuid
from datetime import datetime

from worker.hypervisors import domain_xml, naming
from worker.hypervisors.errors import InvalidInputError, NetworkNotFoundError, PermanentError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout

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


def _generate_mac(used: set[str]) -> str:
    """``52:54:00:xx:xx:xx`` (QEMU's OUI) not in ``used`` (256 attempts)."""
    rng = random.SystemRandom()
    for _ in range(256):
        mac = "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            return mac
    raise PermanentError("could not generate a unique MAC address after 256 attempts")


def _nics(host: LibvirtHost, layout: Layout, model: str) -> tuple[domain_xml.NicSpec, ...]:
    r = layout.reservation
    vp = r.vmprofile
    used: set[str] | None = None  # listed only when a MAC has to be generated
    nics = []
    for n, (switch, generated, configured, label) in enumerate((
        (vp.virtualswitch0, vp.eth0_generated, r.eth0_mac, "computer.eth0macaddress"),
        (vp.virtualswitch1, vp.eth1_generated, r.eth1_mac, "computer.eth1macaddress"),
    )):  # fmt: skip
        if not switch:
            continue
        kind, source = resolve_switch(host, switch, f"vmprofile {vp.profile_name!r} virtualswitch{n}")
        if generated or not configured:
            used = host.used_macs() if used is None else used
            mac = _generate_mac(used)
            used.add(mac)
        else:
            mac = naming.normalize_mac(configured, label)
        nics.append(domain_xml.NicSpec(kind, source, mac, model))
    return tuple(nics)


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


__all__ = ["check_vnc", "domain_spec", "is_path_on_local_disk", "resolve_switch"]
