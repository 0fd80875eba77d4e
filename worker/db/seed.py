"""Seed a VCL site the way the web front end does (used by the demo, the tests and the benchmarks).

* :func:`create_demo_schema` builds the embedded SQLite demo database: the mapped tables plus the
  ``vcl.sql`` seed rows the flows need, with their real ids. On MariaDB/MySQL the schema and seeds
  come from ``vcl.sql`` itself (``mariadb vcl < vcl.sql``); there it only checks they are present.
* :func:`seed_site` adds a management node, a KVM host, a vmprofile, VM computers and one image
  (``image.php:addResource`` naming) - what an admin does in the web UI.
* :func:`create_request`, :func:`create_capture_request`, :func:`create_tomaintenance_request`
  insert requests as the web does for a new reservation, ``AJupdateImage`` and ``AJvmFromHost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError

# ---------------------------------------------------------------------- vcl.sql seed rows (subset)

STATES: tuple[tuple[int, str], ...] = (
    (1, "deleted"), (2, "available"), (3, "reserved"), (4, "classreserved"), (5, "failed"),
    (6, "reloading"), (7, "imageinuse"), (8, "inuse"), (9, "cleaning"), (10, "maintenance"),
    (11, "timeout"), (12, "complete"), (13, "new"), (14, "pending"), (15, "imageprep"), (16, "image"),
    (17, "makeproduction"), (18, "tomaintenance"), (19, "reload"), (20, "vmhostinuse"),
    (21, "tovmhostinuse"), (22, "tohpc"), (23, "hpc"), (24, "checkpoint"), (25, "serverinuse"),
    (26, "rebootsoft"), (27, "reinstall"), (28, "reboothard"), (29, "servermodified"),
)  # fmt: skip

#: In vcl.sql order (ids are auto-assigned there, so they come out 1..56 in this order too).
LOADSTATES: tuple[tuple[str, str, int | None], ...] = (
    ("info", "info", 2), ("loadimageblade", "must reload computer", 0),
    ("loadimagevmware", "loadimagevmware", 1), ("statuscheck", "computer status check", 10),
    ("assign2project", "changing VLAN setting ", 0), ("rinstall", "starting install process", 1),
    ("dynamicDHCPaddress", "detecting dynamic IP address", 2),
    ("staticIPaddress", "setting static IP address", 2),
    ("loadimagecomplete", "running post configuration", 0),
    ("loadimagefailed", "preparing computer failed", 2), ("failed", "reservation failed", 2),
    ("bootstate", "image loading", 175),
    ("editnodetype", "edit config file to load requested image", 1),
    ("xcatstage1", "detected dhcp request from node", 2),
    ("xcatstage2", "rebooting node for reinstall", 100), ("WARNING", "WARNING", 2),
    ("xcatREADY", "computer reported READY starting post configs", 2),
    ("reserved", "ready for Connect", 0),
    ("xcatstage3", "node starting to received install instructions", 93),
    ("xcatstage4", "node received install instructions", 0),
    ("xcatstage5", "starting reload process", 27),
    ("doesimageexists", "confirming image exists locally", 4), ("vmround1", "vmround1", 1),
    ("vmround2", "vmround2", 186), ("transfervm", "transferring image files to host server", 255),
    ("vmsetupconfig", "creating configuration file", 2),
    ("vmstage1", "detected stage 1 of 5 loading process", 22),
    ("vmstage2", "detected stage 2 of 5 loading process", 120),
    ("vmstage3", "detected stage 3 of 4 loading process", 0),
    ("xcatround2", "waiting for image loading to complete", 0),
    ("xcatround3", "loaded - start post configuration", 0), ("xcatround1", "xcatround1", 2),
    ("timeout", "timeout", 2), ("vmwareready", "machine online", 3),
    ("startload", "starting load process", 6), ("addinguser", "adding user account", 18),
    ("connected", "detected user connection", 2), ("nodeready", "resource ready", 0),
    ("inuseend10", "10 minute warning ", 2), ("inuseend5", "5 minute warning", 2),
    ("machinebooted", "machine booting", 68), ("checklabstatus", "checking computer status", 2),
    ("startvm", "starting virtual machine", 3),
    ("vmstage5", "detected stage 5 of 5 loading process", 1),
    ("vmconfigcopy", "copying vm config file", None), ("imageloadcomplete", "node ready to add user", 0),
    ("repeat", "repeat", 0), ("deleted", "deleted", None),
    ("begin", "beginning to process reservation", 0), ("exited", "vcld process exited", 0),
    ("acknowledgetimeout", "start acknowledge timeout", 0),
    ("noinitialconnection", "initial user connection not detected", 0),
    ("initialconnecttimeout", "initial user connection timeout", 0),
    ("reconnecttimeout", "user reconnection timeout", 0),
    ("copyfrompartnerMN", "copy image from partner management node", 0),
    ("postreserve", "post reserve completed", 0),
)  # fmt: skip

MODULES: tuple[tuple[int, str, str, str], ...] = (
    (1, "provisioning_xcat", "xCAT Provisioning Module", "VCL::Module::Provisioning::xCAT"),
    (3, "provisioning_lab", "Computing Lab Provisioning Module", "VCL::Module::Provisioning::Lab"),
    (5, "os_linux", "Linux OS Module", "VCL::Module::OS::Linux"),
    (8, "predictive_level_0", "Reload with last image", "VCL::Module::Predictive::Level_0"),
    (9, "predictive_level_1", "Reload image based on recent user demand", "VCL::Module::Predictive::Level_1"),
    (14, "os_linux_ubuntu", "Ubuntu Linux OS Module", "VCL::Module::OS::Linux::Ubuntu"),
    (15, "os_unix_lab", "Unix Lab OS Module", "VCL::Module::OS::Linux::UnixLab"),
    (21, "provisioning_vmware", "VMware Provisioning Module", "VCL::Module::Provisioning::VMware::VMware"),
    (23, "base_module", "VCL Base Module", "VCL::Module"),
    (24, "provisioning_vbox", "Virtual Box Provisioning Module", "VCL::Module::Provisioning::vbox"),
    (27, "provisioning_libvirt", "Libvirt Provisioning Module", "VCL::Module::Provisioning::libvirt"),
    (31, "predictive_level_2", "Unload/power off after reservation", "VCL::Module::Predictive::Level_2"),
    (32, "provisioning_openstack", "OpenStack Provisioning Module", "VCL::Module::Provisioning::openstack"),
    (33, "provisioning_one", "OpenNebula Provisioning Module", "VCL::Module::Provisioning::one"),
)  # fmt: skip

PROVISIONING: tuple[tuple[int, str, str, int], ...] = (
    (1, "xcat", "xCAT", 1), (3, "lab", "Computing Lab", 3), (7, "vmware", "VMware", 21),
    (8, "vbox", "Virtual Box", 24), (9, "libvirt", "Libvirt Virtualization API", 27),
    (10, "none", "None", 23), (11, "openstack", "openstack", 32), (12, "one", "OpenNebula", 33),
)  # fmt: skip

IMAGETYPES: tuple[tuple[int, str], ...] = (
    (1, "none"), (2, "partimage"), (3, "partimage-ng"), (4, "lab"), (5, "kickstart"), (6, "vmdk"),
    (7, "qcow2"), (8, "vdi"),
)  # fmt: skip
OSTYPES: tuple[tuple[int, str], ...] = ((1, "windows"), (2, "linux"), (3, "unix"), (4, "osx"))
OSINSTALLTYPES: tuple[tuple[int, str], ...] = (
    (1, "partimage"), (2, "kickstart"), (3, "none"), (4, "vmware"), (5, "vbox"), (6, "openstack"),
)  # fmt: skip
#: (id, name, prettyname, type, installtype, minram, sourcepath, moduleid) after vcl.sql's UPDATEs.
OSES: tuple[tuple[int, str, str, str, str, int, str | None, int], ...] = (
    (2, "sun4x_58", "Solaris 5.8 (Lab)", "unix", "none", 512, None, 15),
    (36, "vmwarelinux", "Generic Linux (VMware)", "linux", "vmware", 512, "vmware_images", 5),
    (44, "vmwareubuntu", "Ubuntu (VMware)", "linux", "vmware", 512, "vmware_images", 14),
)
PLATFORMS: tuple[tuple[int, str], ...] = ((1, "i386"), (3, "ultrasparc"), (4, "i386_lab"))
RESOURCETYPES: tuple[tuple[int, str], ...] = (
    (12, "computer"), (13, "image"), (15, "schedule"), (16, "managementnode"), (17, "serverprofile"),
    (18, "addomain"),
)  # fmt: skip
VARIABLES: tuple[tuple[str, str], ...] = (
    ("schema-version", "1"), ("acknowledgetimeout", "900"), ("initialconnecttimeout", "900"),
    ("reconnecttimeout", "900"), ("general_inuse_check", "300"), ("server_inuse_check", "900"),
    ("general_end_notice_first", "600"), ("general_end_notice_second", "300"),
    ("ignore_connections_gte", "1440"),
)  # fmt: skip
KVM_PROFILE_NAME = "KVM - local storage"
LIBVIRT_PROVISIONING_ID = 9
NONE_PROVISIONING_ID = 10


def create_demo_schema(engine: Engine) -> None:
    """SQLite: create the mapped tables and insert the vcl.sql seed rows the flows need.

    MariaDB/MySQL: the schema must come from ``vcl.sql``; this only checks it is there.
    Idempotent on SQLite (seed rows are inserted only into an empty ``state`` table).
    """
    if engine.dialect.name != "sqlite":
        if not inspect(engine).has_table("state"):
            raise VclDataError(
                f"database {engine.url.database!r} has no VCL schema: load vcl.sql into it first"
            )
        return
    m.Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        if s.execute(select(func.count()).select_from(m.State)).scalar_one():
            return
        _seed_sqlite(s)


def _seed_sqlite(s: Session) -> None:
    old = datetime(1980, 1, 1)
    s.execute(insert(m.State), [{"id": i, "name": n} for i, n in STATES])
    s.execute(
        insert(m.ComputerLoadState),
        [{"loadstatename": n, "prettyname": p, "est": e} for n, p, e in LOADSTATES],
    )
    s.execute(
        insert(m.Module),
        [
            {"id": i, "name": n, "prettyname": p, "description": "", "perlpackage": pk}
            for i, n, p, pk in MODULES
        ],
    )
    s.execute(
        insert(m.Provisioning),
        [{"id": i, "name": n, "prettyname": p, "moduleid": mid} for i, n, p, mid in PROVISIONING],
    )
    s.execute(insert(m.ImageType), [{"id": i, "name": n} for i, n in IMAGETYPES])
    s.execute(insert(m.OSType), [{"id": i, "name": n} for i, n in OSTYPES])
    s.execute(insert(m.OSInstallType), [{"id": i, "name": n} for i, n in OSINSTALLTYPES])
    s.execute(
        insert(m.OS),
        [
            {"id": i, "name": n, "prettyname": p, "type": t, "installtype": it, "minram": ram,
             "sourcepath": sp, "moduleid": mid}
            for i, n, p, t, it, ram, sp, mid in OSES
        ],
    )  # fmt: skip
    s.execute(insert(m.Platform), [{"id": i, "name": n} for i, n in PLATFORMS])
    s.execute(
        insert(m.Affiliation),
        [{"id": 1, "name": "Local", "dataUpdateText": ""}, {"id": 2, "name": "Global", "dataUpdateText": ""}],
    )
    s.execute(
        insert(m.User),
        [
            {"id": 1, "unityid": "admin", "affiliationid": 1, "firstname": "vcl", "lastname": "admin",
             "email": "root@localhost", "adminlevelid": 3, "lastupdated": datetime(2007, 5, 17, 9, 58, 39)},
            {"id": 2, "unityid": "vclreload", "affiliationid": 1, "firstname": "vcl", "lastname": "reload",
             "email": "", "adminlevelid": 1},
            {"id": 3, "unityid": "vclsystem", "affiliationid": 1, "firstname": "vcl", "lastname": "system",
             "email": "", "adminlevelid": 1},
        ],
    )  # fmt: skip
    s.execute(
        insert(m.Image).values(
            id=1, name="noimage", prettyname="No Image", ownerid=1, imagetypeid=1, platformid=1, OSid=2,
            minram=0, minprocnumber=1, minprocspeed=0, minnetwork=10, reloadtime=0, deleted=0, test=0,
            forcheckout=0, maxinitialtime=0, project="vcl", size=0,
        )
    )  # fmt: skip
    s.execute(
        insert(m.ImageRevision).values(
            id=1, imageid=1, revision=0, userid=1, datecreated=old, deleted=0, production=1,
            imagename="noimage",
        )
    )  # fmt: skip
    s.execute(insert(m.ResourceType), [{"id": i, "name": n} for i, n in RESOURCETYPES])
    s.execute(insert(m.Resource), [{"id": 4, "resourcetypeid": 13, "subid": 1}])
    s.execute(
        insert(m.Variable),
        [{"name": n, "serialization": "none", "value": v, "timestamp": old} for n, v in VARIABLES],
    )
    # vcl.sql inserts 5 vmprofiles; the KVM one is the 5th (id 5).
    s.execute(
        insert(m.VMProfileRow).values(
            id=5, profilename=KVM_PROFILE_NAME, imageid=1, repositorypath=None, repositoryimagetypeid=7,
            datastorepath="/var/lib/libvirt/images", datastoreimagetypeid=7,
            vmpath="/var/lib/libvirt/images", virtualswitch0="br0", virtualswitch1="br1", vmdisk="dedicated",
        )
    )  # fmt: skip


# ---------------------------------------------------------------------- a site


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


def _pk(s: Session, stmt: Any) -> int:
    res = s.execute(stmt)
    key = res.inserted_primary_key  # type: ignore[attr-defined]
    return int(key[0])


def _id_by_name(s: Session, model: Any, name: str, column: str = "name") -> int:
    value = s.execute(select(model.id).where(getattr(model, column) == name)).scalar_one_or_none()
    if value is None:
        raise VclDataError(f"{model.__tablename__} {name!r} does not exist")
    return int(value)


def _add_resource(s: Session, type_name: str, subid: int) -> None:
    s.execute(
        insert(m.Resource).values(resourcetypeid=_id_by_name(s, m.ResourceType, type_name), subid=subid)
    )


def seed_site(sf: sessionmaker[Session], spec: SiteSpec | None = None) -> SeededSite:
    """Insert a management node, a KVM host (its own computer, vmprofile, vmhost), the VM
    computers and a production image (revision 0), as the web front end does."""
    spec = spec or SiteSpec()
    with sf.begin() as s:
        now = db_now(s)
        available = _id_by_name(s, m.State, "available")
        qcow2 = _id_by_name(s, m.ImageType, "qcow2")
        mn_id = _pk(
            s,
            insert(m.ManagementNode).values(
                IPaddress=spec.management_node_ip, hostname=spec.management_node_hostname, ownerid=1,
                stateid=available, checkininterval=12, installpath="/install", imagelibenable=0,
                sshport=22, publicIPconfiguration="dynamicDHCP", availablenetworks="",
            ),
        )  # fmt: skip
        _add_resource(s, "managementnode", mn_id)
        host_id = _insert_computer(
            s, spec.vmhost_hostname, spec.vmhost_ip, _id_by_name(s, m.State, "vmhostinuse"), "blade",
            NONE_PROVISIONING_ID, None, None, None, ram=16384, procnumber=4,
        )  # fmt: skip
        _add_resource(s, "computer", host_id)
        profile_id = _pk(
            s,
            insert(m.VMProfileRow).values(
                profilename=spec.profile_name, imageid=1, repositorypath=spec.repository_path,
                repositoryimagetypeid=qcow2, datastorepath=spec.datastore_path, datastoreimagetypeid=qcow2,
                vmpath=spec.vm_path, virtualswitch0=spec.virtualswitch0, virtualswitch1=spec.virtualswitch1,
                vmdisk="dedicated", eth0generated=int(spec.eth0_generated),
                eth1generated=int(spec.eth1_generated),
            ),
        )  # fmt: skip
        vmhost_id = _pk(s, insert(m.VMHost).values(computerid=host_id, vmprofileid=profile_id))
        computer_ids: list[int] = []
        for i, hostname in enumerate(spec.vm_hostnames):
            cid = _insert_computer(
                s, hostname, f"{spec.vm_ip_prefix}{spec.vm_ip_start + i}", available, "virtualmachine",
                LIBVIRT_PROVISIONING_ID, vmhost_id, spec.mac(i, 0), spec.mac(i, 1), ram=2048, procnumber=2,
            )  # fmt: skip
            _add_resource(s, "computer", cid)
            computer_ids.append(cid)
        os_row = s.execute(select(m.OS.id, m.OS.name).where(m.OS.name == spec.os_name)).one_or_none()
        if os_row is None:
            raise VclDataError(f"OS {spec.os_name!r} does not exist")
        image_id = _pk(
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
        rev_id = _pk(
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
    provisioningid: int,
    vmhostid: int | None,
    eth0: str | None,
    eth1: str | None,
    *,
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
    return _pk(s, insert(m.Computer).values(**values))


# ---------------------------------------------------------------------- requests


def _user_id(s: Session, unityid: str) -> int:
    return _id_by_name(s, m.User, unityid, column="unityid")


def _insert_request(
    s: Session,
    *,
    computer_id: int,
    image_id: int,
    imagerevision_id: int,
    management_node_id: int,
    state: str,
    laststate: str,
    start: datetime,
    end: datetime,
    user_id: int,
    forimaging: int = 0,
    with_log: bool = True,
) -> tuple[int, int]:
    now = db_now(s)
    log_id: int | None = None
    if with_log:
        log_id = _pk(
            s,
            insert(m.Log).values(
                userid=user_id, nowfuture="now" if start <= now else "future", start=start, initialend=end,
                finalend=end, wasavailable=1, ending="none", computerid=computer_id, imageid=image_id,
                size=0,
            ),
        )  # fmt: skip
    request_id = _pk(
        s,
        insert(m.Request).values(
            stateid=_id_by_name(s, m.State, state), laststateid=_id_by_name(s, m.State, laststate),
            userid=user_id, logid=log_id, forimaging=forimaging, test=0, preload=0, start=start, end=end,
            daterequested=now, checkuser=1,
        ),
    )  # fmt: skip
    if log_id is not None:
        s.execute(update(m.Log).where(m.Log.id == log_id).values(requestid=request_id))
    reservation_id = _pk(
        s,
        insert(m.Reservation).values(
            requestid=request_id, computerid=computer_id, imageid=image_id,
            imagerevisionid=imagerevision_id, managementnodeid=management_node_id,
        ),
    )  # fmt: skip
    return request_id, reservation_id


def create_request(
    sf: sessionmaker[Session],
    *,
    computer_id: int,
    image_id: int,
    imagerevision_id: int,
    management_node_id: int,
    state: str = "new",
    laststate: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    user: str = "admin",
) -> tuple[int, int]:
    """A reservation as the web's new-reservation form makes it (request + reservation + log).
    ``laststate`` defaults to ``state`` (the web inserts new/new); ``start`` to now, ``end`` to
    start + 1 h. Returns (request_id, reservation_id)."""
    with sf.begin() as s:
        now = db_now(s)
        start = start or now
        return _insert_request(
            s,
            computer_id=computer_id,
            image_id=image_id,
            imagerevision_id=imagerevision_id,
            management_node_id=management_node_id,
            state=state,
            laststate=laststate or state,
            start=start,
            end=end or start + timedelta(hours=1),
            user_id=_user_id(s, user),
        )


def next_revision_imagename(previous: str, revision: int) -> str:
    """``image.php``: the previous newest revision's imagename with its trailing number replaced."""
    if re.search(r"\d+$", previous):
        return re.sub(r"\d+$", str(revision), previous)
    return f"{previous}-v{revision}"


def create_capture_request(
    sf: sessionmaker[Session],
    *,
    computer_id: int,
    image_id: int,
    management_node_id: int,
    laststate: str = "inuse",
    user: str = "admin",
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[int, int, int]:
    """``image.php:AJupdateImage`` on an imaging reservation: ``image.test = 1``, a new revision
    (max + 1, deleted 1, production 0), request state ``image`` with ``forimaging = 1`` and the
    reservation pointing at the new revision. Returns (request_id, reservation_id, imagerevision_id)."""
    with sf.begin() as s:
        now = db_now(s)
        user_id = _user_id(s, user)
        newest = s.execute(
            select(m.ImageRevision.revision, m.ImageRevision.imagename)
            .where(m.ImageRevision.imageid == image_id)
            .order_by(m.ImageRevision.revision.desc())
            .limit(1)
        ).one_or_none()
        if newest is None:
            raise VclDataError(f"image {image_id} has no imagerevision")
        revision = int(newest.revision) + 1
        s.execute(update(m.Image).where(m.Image.id == image_id).values(test=1))
        rev_id = _pk(
            s,
            insert(m.ImageRevision).values(
                imageid=image_id, revision=revision, userid=user_id, datecreated=now, deleted=1,
                production=0, comments="captured by vcl-worker tests",
                imagename=next_revision_imagename(newest.imagename, revision), autocaptured=0,
            ),
        )  # fmt: skip
        start = start or now - timedelta(hours=1)
        request_id, reservation_id = _insert_request(
            s,
            computer_id=computer_id,
            image_id=image_id,
            imagerevision_id=rev_id,
            management_node_id=management_node_id,
            state="image",
            laststate=laststate,
            start=start,
            end=end or now + timedelta(hours=1),
            user_id=user_id,
            forimaging=1,
        )
        return request_id, reservation_id, rev_id


def create_tomaintenance_request(
    sf: sessionmaker[Session], *, computer_id: int, management_node_id: int, user: str = "vclreload"
) -> tuple[int, int]:
    """``vm.php:AJvmFromHost``: a ``tomaintenance`` request with image ``noimage``, starting now."""
    with sf.begin() as s:
        now = db_now(s)
        noimage = s.execute(
            select(m.ImageRevision.imageid, m.ImageRevision.id)
            .join(m.Image, m.Image.id == m.ImageRevision.imageid)
            .where(m.Image.name == "noimage", m.ImageRevision.imagename == "noimage")
            .order_by(m.ImageRevision.id)
            .limit(1)
        ).one_or_none()
        if noimage is None:
            raise VclDataError("image 'noimage' does not exist")
        return _insert_request(
            s,
            computer_id=computer_id,
            image_id=int(noimage[0]),
            imagerevision_id=int(noimage[1]),
            management_node_id=management_node_id,
            state="tomaintenance",
            laststate="tomaintenance",
            start=now,
            end=now + timedelta(hours=1),
            user_id=_user_id(s, user),
        )


__all__ = [
    "KVM_PROFILE_NAME",
    "SeededSite",
    "SiteSpec",
    "create_capture_request",
    "create_demo_schema",
    "create_request",
    "create_tomaintenance_request",
    "next_revision_imagename",
    "seed_site",
]
