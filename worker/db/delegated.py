"""The VCL rows of delegated mode (vcld calls the worker through the bridge module).

vcld's libvirt module writes three things outside the request/computer *states*, and the worker
writes them for vcld, nothing more: the image rename of ``capture`` (``utils.pm:update_image_name``
and ``update_image_type``), and in ``post_maintenance_action`` the computer's current image
``noimage`` (``update_computer_imagename``) and ``vmhostid = NULL`` (``switch_vmhost_id``). Also the
query behind the dispatcher's guard (:func:`bridge_computers`). Functions take an open session;
:class:`~worker.db.store.VclStore` owns the transaction.
"""

from __future__ import annotations

from sqlalchemy import Select, and_, case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.capture import MAX_IMAGE_NAME
from worker.db.errors import VclDataError
from worker.db.reads import noimage_revision
from worker.db.reservation_row import BRIDGE_PERL_PACKAGE
from worker.reservation import Reservation

#: ``resourcetype.id`` of computers and of management nodes (vcl.sql's fixed rows).
RESOURCE_COMPUTER = 12
RESOURCE_MANAGEMENT_NODE = 16


def rename_captured_image(s: Session, r: Reservation, new_name: str, datastore_imagetype: str) -> None:
    """``update_image_name`` (image.name + imagerevision.imagename) and ``update_image_type`` (the
    image's type becomes ``datastore_imagetype`` when such an imagetype row exists)."""
    if not new_name or len(new_name) > MAX_IMAGE_NAME:
        raise VclDataError(f"invalid new image name {new_name!r} (1-{MAX_IMAGE_NAME} characters)")
    type_id = s.execute(
        select(m.ImageType.id).where(m.ImageType.name == datastore_imagetype)
    ).scalar_one_or_none()
    values: dict[str, object] = {"name": new_name}
    if type_id is not None:
        values["imagetypeid"] = type_id
    try:
        s.execute(
            update(m.Image)
            .where(m.Image.id == r.image_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError as exc:  # image.name is unique: permanent, not worth a retry
        raise VclDataError(f"image {r.image_id} cannot be renamed to {new_name!r}: {exc.orig}") from exc
    s.execute(
        update(m.ImageRevision)
        .where(m.ImageRevision.id == r.imagerevision_id)
        .values(imagename=new_name)
        .execution_options(synchronize_session=False)
    )


def detach_computer(s: Session, computer_id: int) -> bool:
    """``update_computer_imagename(computer, 'noimage')`` + ``switch_vmhost_id(computer, NULL)``.

    Returns whether the ``noimage`` revision was found and set (vcld only warns when it is missing;
    ``vmhostid`` is cleared either way)."""
    noimage = noimage_revision(s)
    values: dict[str, object] = {"vmhostid": None}
    if noimage is not None:
        values.update(currentimageid=noimage[0], imagerevisionid=noimage[1])
    s.execute(
        update(m.Computer)
        .where(m.Computer.id == computer_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return noimage is not None


def _mapped_computer_ids(management_node_id: int) -> Select[int]:
    """Ids of computers whose resource group is mapped to a group of ``management_node_id``
    (``resourcemap``, either column order): how VCL's web assigns reservations to nodes."""
    rc, rm = aliased(m.Resource, name="rc"), aliased(m.Resource, name="rm")
    gc = aliased(m.ResourceGroupMember, name="gc")
    gm = aliased(m.ResourceGroupMember, name="gm")
    mp = m.ResourceMap
    computer_side_2 = and_(
        mp.resourcegroupid2 == gc.resourcegroupid,
        mp.resourcetypeid2 == RESOURCE_COMPUTER,
        mp.resourcetypeid1 == RESOURCE_MANAGEMENT_NODE,
    )
    computer_side_1 = and_(
        mp.resourcegroupid1 == gc.resourcegroupid,
        mp.resourcetypeid1 == RESOURCE_COMPUTER,
        mp.resourcetypeid2 == RESOURCE_MANAGEMENT_NODE,
    )
    node_group = case(
        (mp.resourcetypeid1 == RESOURCE_MANAGEMENT_NODE, mp.resourcegroupid1), else_=mp.resourcegroupid2
    )
    return (
        select(rc.subid)
        .select_from(rc)
        .join(gc, gc.resourceid == rc.id)
        .join(mp, or_(computer_side_2, computer_side_1))
        .join(gm, gm.resourcegroupid == node_group)
        .join(
            rm,
            and_(
                rm.id == gm.resourceid,
                rm.resourcetypeid == RESOURCE_MANAGEMENT_NODE,
                rm.subid == management_node_id,
            ),
        )
        .where(rc.resourcetypeid == RESOURCE_COMPUTER)
    )


def bridge_computers(s: Session, management_node_id: int, limit: int = 5) -> list[str]:
    """Hostnames (at most ``limit``, by computer id) of live computers whose provisioning module is
    the bridge and which ``management_node_id`` serves: reserved through it, or mapped to it."""
    c = m.Computer
    reserved = select(m.Reservation.computerid).where(m.Reservation.managementnodeid == management_node_id)
    rows = s.execute(
        select(c.hostname)
        .join(m.Provisioning, m.Provisioning.id == c.provisioningid)
        .join(m.Module, m.Module.id == m.Provisioning.moduleid)
        .where(
            m.Module.perlpackage == BRIDGE_PERL_PACKAGE,
            c.deleted == 0,
            or_(c.id.in_(reserved), c.id.in_(_mapped_computer_ids(management_node_id))),
        )
        .order_by(c.id)
        .limit(limit)
    ).scalars()
    return [str(h) for h in rows]


__all__ = [
    "RESOURCE_COMPUTER",
    "RESOURCE_MANAGEMENT_NODE",
    "bridge_computers",
    "detach_computer",
    "rename_captured_image",
]
