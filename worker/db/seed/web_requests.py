"""Requests inserted as the web front end inserts them: a new reservation, ``AJupdateImage`` (a
capture) and ``AJvmFromHost`` (tomaintenance)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError
from worker.db.seed.rows import id_by_name, pk


def _user_id(s: Session, unityid: str) -> int:
    return id_by_name(s, m.User, unityid, column="unityid")


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
        log_id = pk(
            s,
            insert(m.Log).values(
                userid=user_id, nowfuture="now" if start <= now else "future", start=start, initialend=end,
                finalend=end, wasavailable=1, ending="none", computerid=computer_id, imageid=image_id,
                size=0,
            ),
        )  # fmt: skip
    request_id = pk(
        s,
        insert(m.Request).values(
            stateid=id_by_name(s, m.State, state), laststateid=id_by_name(s, m.State, laststate),
            userid=user_id, logid=log_id, forimaging=forimaging, test=0, preload=0, start=start, end=end,
            daterequested=now, checkuser=1,
        ),
    )  # fmt: skip
    if log_id is not None:
        s.execute(update(m.Log).where(m.Log.id == log_id).values(requestid=request_id))
    reservation_id = pk(
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


def _next_revision_imagename(previous: str, revision: int) -> str:
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
        rev_id = pk(
            s,
            insert(m.ImageRevision).values(
                imageid=image_id, revision=revision, userid=user_id, datecreated=now, deleted=1,
                production=0, comments="captured by vcl-worker tests",
                imagename=_next_revision_imagename(newest.imagename, revision), autocaptured=0,
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


__all__ = ["create_capture_request", "create_request", "create_tomaintenance_request"]
