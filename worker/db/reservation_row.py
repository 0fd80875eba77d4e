"""The one SELECT behind :meth:`VclStore.load_reservation` and the mapping of its row to the
provisioning core's :class:`~worker.reservation.Reservation`.

Everything is outer-joined in a single statement so that one round trip reads a reservation (the
B5 benchmark and a test count the statements); a missing link is reported afterwards, from the
row, with the ids involved.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, case, distinct, func, or_, select
from sqlalchemy.orm import aliased

from worker.db import models as m
from worker.db.errors import (
    ImageRevisionError,
    NotLibvirtProvisionedError,
    NoVMHostError,
    NoVMProfileError,
    VclDataError,
)
from worker.reservation import Reservation, VMProfile

LIBVIRT_PERL_PACKAGE = "VCL::Module::Provisioning::libvirt"
#: ``module.perlpackage`` of the vcld bridge (integrations/vcld/sql/register.sql): vcld calls the
#: worker for these computers, which run exactly the same libvirt provisioning.
BRIDGE_PERL_PACKAGE = "VCL::Module::Provisioning::vcl_worker"
#: The modules whose computers this project's libvirt provisioning runs; any other is refused.
WORKER_PERL_PACKAGES: tuple[str, ...] = (LIBVIRT_PERL_PACKAGE, BRIDGE_PERL_PACKAGE)


def short_name(hostname: str) -> str:
    """``hostname`` up to the first ``.`` (DataStructure SHORTNAME)."""
    return hostname.split(".", 1)[0]


#: The VM host's own ``computer`` row, as :func:`join_vmhost_and_module` joins it (its hostname routes).
VMHOST_COMPUTER = aliased(m.Computer, name="hc")
_RES_COMPUTER = aliased(m.Computer, name="c")
_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


def join_vmhost_and_module(stmt: _Query, computer_id: Any) -> _Query:
    """Outer-join the reservation's computer ``computer_id`` to its VM host's computer row
    (:data:`VMHOST_COMPUTER`) and to its provisioning ``module`` (whose computer it is): what the
    dispatcher needs of every due request and pending claim."""
    c = _RES_COMPUTER
    return (
        stmt.outerjoin(c, c.id == computer_id)
        .outerjoin(m.VMHost, m.VMHost.id == c.vmhostid)
        .outerjoin(VMHOST_COMPUTER, VMHOST_COMPUTER.id == m.VMHost.computerid)
        .outerjoin(m.Provisioning, m.Provisioning.id == c.provisioningid)
        .outerjoin(m.Module, m.Module.id == m.Provisioning.moduleid)
    )


def reservation_query(reservation_id: int) -> Any:
    rs = m.Reservation
    rq = m.Request
    st = aliased(m.State, name="st")
    lst = aliased(m.State, name="lst")
    c = aliased(m.Computer, name="c")
    prov = m.Provisioning
    mod = m.Module
    img = m.Image
    os_ = m.OS
    rev = m.ImageRevision
    vh = m.VMHost
    hc = aliased(m.Computer, name="hc")
    vp = m.VMProfileRow
    dsit = aliased(m.ImageType, name="dsit")
    rpit = aliased(m.ImageType, name="rpit")
    mn = m.ManagementNode
    ost = m.OSType
    cmm = m.connectmethodmap
    cmp = m.ConnectMethodPort
    # TCP ports of the connect methods enabled for the image (VCL's connectmethodmap), as one comma
    # list so the reservation stays a single SELECT. As vcld's get_reservation_connect_method_info
    # reads it: the rows mapped to the image's OS type, OS or revision (autoprovisioned ones aside),
    # and per method the last row of ORDER BY imagerevisionid, OSid, OStypeid, disabled decides
    # (NULLs first): a revision's row overrides its OS's, an OS's its OS type's, and on a tie
    # ``disabled`` wins. A disabled method's service is stopped, so its port never proves readiness.
    deciding_rank = (
        select(
            func.max(
                case((cmm.c.imagerevisionid.is_not(None), 8), else_=0)
                + case((cmm.c.OSid.is_not(None), 4), else_=0)
                + case((cmm.c.OStypeid.is_not(None), 2), else_=0)
                + cmm.c.disabled
            )
        )
        .where(
            cmm.c.connectmethodid == cmp.connectmethodid,
            cmm.c.autoprovisioned.is_(None),
            or_(
                cmm.c.OStypeid == ost.id,
                cmm.c.OSid == img.OSid,
                cmm.c.imagerevisionid == rs.imagerevisionid,
            ),
        )
        .correlate(cmp, ost, img, rs)
        .scalar_subquery()
    )
    connect_ports = (
        select(func.group_concat(distinct(cmp.port)))
        .where(cmp.protocol == "TCP", deciding_rank % 2 == 0)  # no row: NULL, not mapped
        .correlate(ost, img, rs)
        .scalar_subquery()
    )
    return (
        select(
            rs.id.label("reservation_id"),
            rs.requestid.label("request_id"),
            rs.imageid.label("res_imageid"),
            rs.imagerevisionid.label("res_imagerevisionid"),
            rs.computerid.label("res_computerid"),
            rs.managementnodeid.label("res_mnid"),
            rq.id.label("rq_id"),
            st.name.label("state"),
            lst.name.label("laststate"),
            c.id.label("computer_id"),
            c.hostname.label("computer_hostname"),
            c.deleted.label("computer_deleted"),
            c.eth0macaddress.label("eth0"),
            c.eth1macaddress.label("eth1"),
            c.vmhostid.label("vmhostid"),
            c.provisioningid.label("provisioningid"),
            prov.name.label("provisioning_name"),
            mod.perlpackage.label("perlpackage"),
            img.id.label("image_id"),
            img.name.label("image_name"),
            img.prettyname.label("image_prettyname"),
            img.project.label("image_project"),
            img.minram.label("image_minram"),
            img.minprocnumber.label("image_minprocnumber"),
            img.OSid.label("image_osid"),
            os_.id.label("os_id"),
            os_.name.label("os_name"),
            os_.type.label("os_type"),
            os_.minram.label("os_minram"),
            rev.id.label("rev_id"),
            rev.imageid.label("rev_imageid"),
            rev.revision.label("rev_revision"),
            rev.imagename.label("rev_imagename"),
            rev.deleted.label("rev_deleted"),
            vh.id.label("vmhost_id"),
            vh.computerid.label("vmhost_computerid"),
            vh.vmprofileid.label("vmhost_vmprofileid"),
            hc.id.label("host_id"),
            hc.hostname.label("host_hostname"),
            vp.id.label("vp_id"),
            vp.profilename.label("vp_profilename"),
            vp.datastorepath.label("vp_datastorepath"),
            vp.vmpath.label("vp_vmpath"),
            vp.repositorypath.label("vp_repositorypath"),
            vp.virtualswitch0.label("vp_vs0"),
            vp.virtualswitch1.label("vp_vs1"),
            vp.eth0generated.label("vp_eth0gen"),
            vp.eth1generated.label("vp_eth1gen"),
            vp.datastoreimagetypeid.label("vp_dsitid"),
            vp.repositoryimagetypeid.label("vp_rpitid"),
            dsit.name.label("ds_imagetype"),
            rpit.name.label("rp_imagetype"),
            mn.id.label("mn_id"),
            mn.hostname.label("mn_hostname"),
            mn.keys.label("mn_keys"),
            c.privateIPaddress.label("private_ip"),
            img.reloadtime.label("image_reloadtime"),
            connect_ports.label("connect_ports"),
        )
        .select_from(rs)
        .outerjoin(rq, rq.id == rs.requestid)
        .outerjoin(st, st.id == rq.stateid)
        .outerjoin(lst, lst.id == rq.laststateid)
        .outerjoin(c, c.id == rs.computerid)
        .outerjoin(prov, prov.id == c.provisioningid)
        .outerjoin(mod, mod.id == prov.moduleid)
        .outerjoin(img, img.id == rs.imageid)
        .outerjoin(os_, os_.id == img.OSid)
        .outerjoin(ost, ost.name == os_.type)
        .outerjoin(rev, rev.id == rs.imagerevisionid)
        .outerjoin(vh, vh.id == c.vmhostid)
        .outerjoin(hc, hc.id == vh.computerid)
        .outerjoin(vp, vp.id == vh.vmprofileid)
        .outerjoin(dsit, dsit.id == vp.datastoreimagetypeid)
        .outerjoin(rpit, rpit.id == vp.repositoryimagetypeid)
        .outerjoin(mn, mn.id == rs.managementnodeid)
        .where(rs.id == reservation_id)
    )


def reservation_from_row(reservation_id: int, r: Any) -> Reservation:
    """Validate one row of :func:`reservation_query` and build the core's dataclass."""
    rid = reservation_id
    if r["rq_id"] is None or r["state"] is None or r["laststate"] is None:
        raise VclDataError(
            f"reservation {rid}: request {r['request_id']} is missing or has an unknown state/laststate"
        )
    state: str = r["state"]
    laststate: str = r["laststate"]
    if state == "pending":
        state = laststate
    if r["computer_id"] is None:
        raise VclDataError(f"reservation {rid}: computer {r['res_computerid']} not found")
    comp = f"computer {r['computer_id']} ({r['computer_hostname']})"
    if r["computer_deleted"]:
        raise VclDataError(f"reservation {rid}: {comp} is deleted")
    perlpackage: str = r["perlpackage"]  # NULL when the provisioning/module row is missing
    if perlpackage not in WORKER_PERL_PACKAGES:
        raise NotLibvirtProvisionedError(
            f"reservation {rid}: {comp} is provisioned by provisioning id {r['provisioningid']} "
            f"({r['provisioning_name']!r}, module {r['perlpackage']!r}), not one of "
            f"{', '.join(WORKER_PERL_PACKAGES)}"
        )
    if r["image_id"] is None:
        raise VclDataError(f"reservation {rid}: image {r['res_imageid']} not found")
    if r["os_id"] is None:
        raise VclDataError(f"reservation {rid}: image {r['image_id']} has unknown OS id {r['image_osid']}")
    if r["rev_id"] is None:
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['res_imagerevisionid']} not found "
            f"(image {r['image_id']} {r['image_name']!r})"
        )
    if r["rev_imageid"] != r["image_id"]:
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['rev_id']} belongs to image {r['rev_imageid']}, "
            f"not to the reservation's image {r['image_id']}"
        )
    # The web creates the capture revision with deleted=1 (image.php:AJupdateImage); image.pm
    # clears it on success. Checkpoint captures follow the same web path.
    if r["rev_deleted"] and state not in ("image", "checkpoint"):
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['rev_id']} ({r['rev_imagename']!r}) is deleted "
            f"and the request state is {state!r}"
        )
    if r["vmhostid"] is None:
        raise NoVMHostError(f"reservation {rid}: {comp} has no VM host (computer.vmhostid is NULL)")
    if r["vmhost_id"] is None:
        raise NoVMHostError(
            f"reservation {rid}: {comp} refers to vmhost {r['vmhostid']}, which does not exist"
        )
    if r["host_id"] is None:
        raise NoVMHostError(
            f"reservation {rid}: vmhost {r['vmhost_id']} refers to host computer "
            f"{r['vmhost_computerid']}, which does not exist"
        )
    if r["vp_id"] is None:
        raise NoVMProfileError(
            f"reservation {rid}: vmhost {r['vmhost_id']} refers to vmprofile "
            f"{r['vmhost_vmprofileid']}, which does not exist"
        )
    if r["ds_imagetype"] is None or r["rp_imagetype"] is None:
        raise NoVMProfileError(
            f"reservation {rid}: vmprofile {r['vp_id']} ({r['vp_profilename']!r}) has unknown image "
            f"type ids datastore={r['vp_dsitid']} repository={r['vp_rpitid']}"
        )
    if r["mn_id"] is None:
        raise VclDataError(f"reservation {rid}: managementnode {r['res_mnid']} not found")
    datastore_path: str = r["vp_datastorepath"]
    vm_path: str | None = r["vp_vmpath"]
    profile = VMProfile(
        id=r["vp_id"],
        profile_name=r["vp_profilename"],
        datastore_path=datastore_path,
        vm_path=vm_path if vm_path else datastore_path,
        repository_path=r["vp_repositorypath"] or None,
        datastore_imagetype=r["ds_imagetype"],
        repository_imagetype=r["rp_imagetype"],
        virtualswitch0=r["vp_vs0"],
        virtualswitch1=r["vp_vs1"],
        eth0_generated=bool(r["vp_eth0gen"]),
        eth1_generated=bool(r["vp_eth1gen"]),
    )
    return Reservation(
        request_id=r["request_id"],
        reservation_id=r["reservation_id"],
        request_state=state,
        request_laststate=laststate,
        computer_id=r["computer_id"],
        computer_hostname=r["computer_hostname"],
        computer_short_name=short_name(r["computer_hostname"]),
        eth0_mac=r["eth0"],
        eth1_mac=r["eth1"],
        image_id=r["image_id"],
        image_name=r["image_name"],
        image_prettyname=r["image_prettyname"],
        image_project=r["image_project"],
        image_minram=int(r["image_minram"]),
        image_minprocnumber=int(r["image_minprocnumber"]),
        imagerevision_id=r["rev_id"],
        imagerevision_revision=int(r["rev_revision"]),
        imagerevision_imagename=r["rev_imagename"],
        os_name=r["os_name"],
        os_type=r["os_type"],
        os_minram=int(r["os_minram"]),
        vmhost_id=r["vmhost_id"],
        vmhost_computer_id=r["host_id"],
        vmhost_short_name=short_name(r["host_hostname"]),
        vmprofile=profile,
        management_node_id=r["mn_id"],
        management_node_short_name=short_name(r["mn_hostname"]),
        computer_private_ip=r["private_ip"] or None,
        image_reloadtime_minutes=int(r["image_reloadtime"] or 10),
        connect_ports=_ports(r["connect_ports"]),
        management_node_keys=tuple(k.strip() for k in (r["mn_keys"] or "").split(",") if k.strip()),
        provisioning_module=perlpackage.rsplit("::", 1)[-1],
    )


def _ports(raw: Any) -> tuple[int, ...]:
    """The comma list of ``GROUP_CONCAT`` as sorted ports (SSH 22 when the image maps none)."""
    if raw is None or str(raw).strip() == "":
        return (22,)
    return tuple(sorted({int(p) for p in str(raw).split(",") if p.strip()}))


__all__ = [
    "BRIDGE_PERL_PACKAGE",
    "LIBVIRT_PERL_PACKAGE",
    "WORKER_PERL_PACKAGES",
    "reservation_from_row",
    "reservation_query",
    "short_name",
]
