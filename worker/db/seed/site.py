"""A site as an admin sets it up in the web UI: a management node, a KVM host (its own computer,
vmprofile and vmhost), VM computers and one image (``image.php:addResource`` naming)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError
from worker.db.seed.data import LIBVIRT_PROVISIONING_ID, NONE_PROVISIONING_ID
from worker.db.seed.rows import id_by_name, pk


@dataclass(frozen=True)
class SiteSpec:
    """What an admin enters in the web UI for one KVM host with its VMs and one base image."""

    datastore_path: str = "/var/lib/libvirt/images"
    vm_path: str | None = "/var/lib/libvirt/images"
    repository_path: str | None = None
    virtualswitch0: str = "default"
    virtualswitch1: str = "default"
    eth0_generated: bool = False
    eth1_generated: bool = False
    profile_name: str = "KVM - vcl-worker"
    vmhost_hostname: str = "kvmhost1.example.org"
    vmhost_ip: str = "192.168.122.1"
    vm_hostnames: tuple[str, ...] = ("vm1.example.org",)
    vm_ip_prefix: str = "192.168.122."
    vm_ip_start: int = 11
    management_node_hostname: str = "mn1.example.org"
    management_node_ip: str = "127.0.0.1"
    #: managementnode.keys: comma list of SSH identity files vcld (and post-load) logs into guests with.
    management_node_keys: str | None = None
    image_prettyname: str = "CentOS 7 Base"
    os_name: str = "vmwarelinux"
    image_minram: int = 1024
    image_minprocnumber: int = 1
    image_architecture: str = "x86_64"
    #: Deterministic MACs 52:54:00:<seed>:<vm index>:<nic>; change it for a second site.
    mac_seed: int = 0

    def mac(self, vm_index: int, nic: int) -> str:
        return f"52:54:00:{self.mac_seed & 0xFF:02x}:{vm_index & 0xFF:02x}:{nic & 0xFF:02x}"


@dataclass(frozen=True)
class SeededSite:
    management_node_id: int
    vmhost_id: int
    vmhost_computer_id: int
    vmprofile_id: int
    computer_ids: tuple[int, ...]
    image_id: int
    imagerevision_id: int
    imagename: str


def _add_resource(s: Session, type_name: str, subid: int) -> None:
    s.execute(insert(m.Resource).values(resourcetypeid=id_by_name(s, m.ResourceType, type_name), subid=subid))


def seed_site(sf: sessionmaker[Session], spec: SiteSpec | None = None) -> SeededSite:
    """Insert a management node, a KVM host (its own computer, vmprofile, vmhost), the VM
    computers and a production image (revision 0), as the web front end does."""
    spec = spec or SiteSpec()
    with sf.begin() as s:
        now = db_now(s)
        available = id_by_name(s, m.State, "available")
        qcow2 = id_by_name(s, m.ImageType, "qcow2")
        mn_id = pk(
            s,
            insert(m.ManagementNode).values(
                IPaddress=spec.management_node_ip, hostname=spec.management_node_hostname, ownerid=1,
                stateid=available, checkininterval=12, installpath="/install", imagelibenable=0,
                sshport=22, publicIPconfiguration="dynamicDHCP", availablenetworks="",
                keys=spec.management_node_keys,
            ),
        )  # fmt: skip
        _add_resource(s, "managementnode", mn_id)
        host_id = _insert_computer(
            s, spec.vmhost_hostname, spec.vmhost_ip, id_by_name(s, m.State, "vmhostinuse"), "blade",
            provisioningid=NONE_PROVISIONING_ID, vmhostid=None, eth0=None, eth1=None, ram=16384, procnumber=4,
        )  # fmt: skip
        _add_resource(s, "computer", host_id)
        profile_id = pk(
            s,
            insert(m.VMProfileRow).values(
                profilename=spec.profile_name, imageid=1, repositorypath=spec.repository_path,
                repositoryimagetypeid=qcow2, datastorepath=spec.datastore_path, datastoreimagetypeid=qcow2,
                vmpath=spec.vm_path, virtualswitch0=spec.virtualswitch0, virtualswitch1=spec.virtualswitch1,
                vmdisk="dedicated", eth0generated=int(spec.eth0_generated),
                eth1generated=int(spec.eth1_generated),
            ),
        )  # fmt: skip
        vmhost_id = pk(s, insert(m.VMHost).values(computerid=host_id, vmprofileid=profile_id))
        computer_ids: list[int] = []
        for i, hostname in enumerate(spec.vm_hostnames):
            cid = _insert_computer(
                s, hostname, f"{spec.vm_ip_prefix}{spec.vm_ip_start + i}", available, "virtualmachine",
                provisioningid=LIBVIRT_PROVISIONING_ID, vmhostid=vmhost_id, eth0=spec.mac(i, 0),
                eth1=spec.mac(i, 1), ram=2048, procnumber=2,
            )  # fmt: skip
            _add_resource(s, "computer", cid)
            computer_ids.append(cid)
        os_row = s.execute(select(m.OS.id, m.OS.name).where(m.OS.name == spec.os_name)).one_or_none()
        if os_row is None:
            raise VclDataError(f"OS {spec.os_name!r} does not exist")
        image_id = pk(
            s,
            insert(m.Image).values(
                name=f"tmp-{spec.image_prettyname}"[:70], prettyname=spec.image_prettyname, ownerid=1,
                imagetypeid=qcow2, platformid=1, OSid=os_row.id, minram=spec.image_minram,
                minprocnumber=spec.image_minprocnumber, minprocspeed=0, minnetwork=100, reloadtime=10,
                deleted=0, test=0, lastupdate=now, forcheckout=1, maxinitialtime=0, project="vcl", size=0,
                architecture=spec.image_architecture,
            ),
        )  # fmt: skip
        # image.php:addResource: <OS.name>-<prettyname without \W><imageid>-v0
        compact = re.sub(r"\W", "", spec.image_prettyname)
        imagename = f"{os_row.name}-{compact}{image_id}-v0"
        s.execute(update(m.Image).where(m.Image.id == image_id).values(name=imagename))
        rev_id = pk(
            s,
            insert(m.ImageRevision).values(
                imageid=image_id, revision=0, userid=1, datecreated=now, deleted=0, production=1,
                imagename=imagename, autocaptured=0,
            ),
        )  # fmt: skip
        _add_resource(s, "image", image_id)
    return SeededSite(
        management_node_id=mn_id,
        vmhost_id=vmhost_id,
        vmhost_computer_id=host_id,
        vmprofile_id=profile_id,
        computer_ids=tuple(computer_ids),
        image_id=image_id,
        imagerevision_id=rev_id,
        imagename=imagename,
    )


def _insert_computer(
    s: Session,
    hostname: str,
    ip: str,
    stateid: int,
    ctype: str,
    *,
    provisioningid: int,
    vmhostid: int | None,
    eth0: str | None,
    eth1: str | None,
    ram: int,
    procnumber: int,
) -> int:
    values: dict[str, Any] = {
        "stateid": stateid, "ownerid": 1, "platformid": 1, "vmhostid": vmhostid, "currentimageid": 1,
        "nextimageid": 1, "imagerevisionid": 1, "RAM": ram, "procnumber": procnumber, "procspeed": 2000,
        "network": 1000, "hostname": hostname, "IPaddress": ip, "privateIPaddress": ip,
        "eth0macaddress": eth0, "eth1macaddress": eth1, "type": ctype, "provisioningid": provisioningid,
        "drivetype": "hda", "deleted": 0,
    }  # fmt: skip
    return pk(s, insert(m.Computer).values(**values))


__all__ = ["SeededSite", "SiteSpec", "seed_site"]
