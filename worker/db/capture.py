"""The database side of ``image.pm`` (reference section 3.6): a finished or failed capture and the
reload request a capture inserts. Functions take an open session; :class:`VclStore` commits."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError
from worker.db.load import set_computer_state
from worker.db.loadlog import insert_loadlog, state_exit_loadlog, update_log_ending
from worker.db.requests import VclIds, dml, transition
from worker.reservation import Reservation

#: ``image.name`` / ``imagerevision.imagename`` hold at most 70 characters in vcl.sql.
MAX_IMAGE_NAME = 70


def _require_image_state(r: Reservation, what: str) -> None:
    if r.request_state != "image":
        raise VclDataError(
            f"{what}: request {r.request_id} was claimed from {r.request_state!r}, not 'image'"
        )


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
    new_request_id = _insert_reload_request(s, ids, r, now)
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


def _insert_reload_request(s: Session, ids: VclIds, r: Reservation, now: datetime) -> int:
    """``utils.pm:insert_reload_request``: computer -> reload, a reload request for the
    reservation's (new) revision on the same computer, owned by ``vclreload``."""
    comp = s.execute(
        select(m.State.name, m.Computer.type)
        .join(m.State, m.State.id == m.Computer.stateid)
        .where(m.Computer.id == r.computer_id)
    ).one_or_none()
    if comp is None:
        raise VclDataError(f"computer {r.computer_id} not found")
    if "reload" in comp[0]:
        return 0
    set_computer_state(s, ids, r.computer_id, "reload")
    insert_loadlog(
        s,
        ids,
        r.reservation_id,
        r.computer_id,
        "loadimagevmware" if comp[1] == "virtualmachine" else "info",
        f"inserted reload request for {r.imagerevision_imagename}",
        now,
    )
    user_id = s.execute(
        select(m.User.id).where(m.User.unityid == "vclreload").order_by(m.User.id).limit(1)
    ).scalar_one_or_none()
    if user_id is None:
        raise VclDataError("user 'vclreload' does not exist")
    new_req = dml(
        s,
        insert(m.Request).values(
            stateid=ids.state(s, "reload"),
            laststateid=ids.state(s, r.request_laststate),
            userid=user_id,
            forimaging=0,
            test=0,
            preload=0,
            start=now,
            end=now + timedelta(minutes=30),
            daterequested=now,
        ),
    ).inserted_primary_key
    assert new_req is not None
    request_id = int(new_req[0])
    s.execute(
        insert(m.Reservation).values(
            requestid=request_id,
            computerid=r.computer_id,
            imageid=r.image_id,
            imagerevisionid=r.imagerevision_id,
            managementnodeid=r.management_node_id,
        )
    )
    return request_id


def fail_capture(s: Session, ids: VclIds, r: Reservation, message: str) -> None:
    """``image.pm:reservation_failed``: see :meth:`VclStore.fail_capture`."""
    _require_image_state(r, "fail_capture")
    if not transition(s, ids, r.request_id, "maintenance", "image"):
        return
    now = db_now(s)
    insert_loadlog(s, ids, r.reservation_id, r.computer_id, "failed", message, now)
    set_computer_state(s, ids, r.computer_id, "maintenance")
    state_exit_loadlog(s, ids, r, "image", now)


__all__ = ["fail_capture", "finish_capture"]
