"""The database side of ``image.pm`` (reference section 3.6): a finished or failed capture and the
reload request a capture inserts. Functions take an open session; :class:`VclStore` commits."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError
from worker.db.load import set_computer_state
from worker.db.loadlog import insert_loadlog, state_exit_loadlog, update_log_ending
from worker.db.reload_request import ReloadTarget, insert_reload_request, vclreload_user
from worker.db.requests import VclIds, transition
from worker.reservation import Reservation

#: ``image.name`` / ``imagerevision.imagename`` hold at most 70 characters in vcl.sql.
MAX_IMAGE_NAME = 70


def _require_image_state(r: Reservation, what: str) -> None:
    if r.request_state != "image":
        raise VclDataError(
            f"{what}: request {r.request_id} was claimed from {r.request_state!r}, not 'image'"
        )


def _reload_target(r: Reservation) -> ReloadTarget:
    return ReloadTarget(
        r.reservation_id, r.computer_id, r.image_id, r.imagerevision_id, r.imagerevision_imagename,
        r.management_node_id, r.request_laststate,
    )  # fmt: skip


def check_capture(s: Session, r: Reservation, new_image_name: str) -> None:
    """What :func:`finish_capture` would refuse, checked before the guest is shut down (so a refusal
    never costs the user's VM): the claim, the new name (length, no other image or revision holds
    it) and the ``vclreload`` user the reload request needs. Raises VclDataError."""
    _require_image_state(r, "capture")
    if not new_image_name or len(new_image_name) > MAX_IMAGE_NAME:
        raise VclDataError(f"capture: invalid new image name {new_image_name!r} (1-70 chars)")
    other_image = s.execute(
        select(m.Image.id).where(m.Image.name == new_image_name, m.Image.id != r.image_id).limit(1)
    ).scalar_one_or_none()
    other_rev = s.execute(
        select(m.ImageRevision.id)
        .where(m.ImageRevision.imagename == new_image_name, m.ImageRevision.imageid != r.image_id)
        .limit(1)
    ).scalar_one_or_none()
    if other_image is not None or other_rev is not None:
        raise VclDataError(
            f"capture: new image name {new_image_name!r} is already used by image "
            f"{other_image if other_image is not None else 'revision ' + str(other_rev)}"
        )
    vclreload_user(s)


def finish_capture(s: Session, ids: VclIds, r: Reservation, new_image_name: str, size_mb: int) -> int:
    """``image.pm`` success (steps 8-11): see :meth:`VclStore.finish_capture`."""
    _require_image_state(r, "finish_capture")
    if not new_image_name or len(new_image_name) > MAX_IMAGE_NAME:
        raise VclDataError(f"finish_capture: invalid new image name {new_image_name!r} (1-70 chars)")
    if not transition(s, ids, r.request_id, "complete", "image"):
        return _existing_reload_request(s, ids, r)
    now = db_now(s)
    s.execute(
        update(m.ImageRevision)
        .where(m.ImageRevision.id == r.imagerevision_id)
        .values(imagename=new_image_name, deleted=0, datecreated=now)
        .execution_options(synchronize_session=False)
    )
    try:
        s.execute(
            update(m.Image)
            .where(m.Image.id == r.image_id)
            .values(name=new_image_name, deleted=0, size=max(0, min(int(size_mb), 65535)), lastupdate=now)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError as exc:
        raise VclDataError(
            f"finish_capture: image {r.image_id} cannot be renamed to {new_image_name!r}: {exc.orig}"
        ) from exc
    new_request_id = insert_reload_request(s, ids, _reload_target(r), now)
    update_log_ending(s, r.request_id, "EOR", now)
    state_exit_loadlog(s, ids, r, "image", now)
    return new_request_id


def _existing_reload_request(s: Session, ids: VclIds, r: Reservation) -> int:
    """The reload request an earlier delivery of the same capture inserted (0 when none)."""
    found = s.execute(
        select(m.Request.id)
        .join(m.Reservation, m.Reservation.requestid == m.Request.id)
        .where(
            m.Reservation.computerid == r.computer_id,
            m.Reservation.imagerevisionid == r.imagerevision_id,
            m.Request.id != r.request_id,
            m.Request.stateid.in_([ids.state(s, "reload"), ids.state(s, "pending")]),
        )
        .order_by(m.Request.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return int(found) if found is not None else 0


def fail_capture(s: Session, ids: VclIds, r: Reservation, message: str) -> None:
    """``image.pm:reservation_failed``: see :meth:`VclStore.fail_capture`."""
    _require_image_state(r, "fail_capture")
    if not transition(s, ids, r.request_id, "maintenance", "image"):
        return
    now = db_now(s)
    insert_loadlog(s, ids, r.reservation_id, r.computer_id, "failed", info=message, now=now)
    set_computer_state(s, ids, r.computer_id, "maintenance")
    state_exit_loadlog(s, ids, r, "image", now)


__all__ = ["check_capture", "fail_capture", "finish_capture"]
