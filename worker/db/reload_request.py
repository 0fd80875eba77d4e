"""``utils.pm:insert_reload_request``: computer ``reload`` and a ``reload`` request by ``vclreload``.

Shared by image.pm's success (:mod:`worker.db.capture`) and reclaim.pm (:mod:`worker.db.reclaim`).
Functions take an open session; :class:`~worker.db.store.VclStore` commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.errors import VclDataError
from worker.db.load import set_computer_state
from worker.db.loadlog import insert_loadlog
from worker.db.requests import VclIds, dml


@dataclass(frozen=True, slots=True)
class ReloadTarget:
    """What the reload request is for: the computer, the image revision to load, who asks."""

    reservation_id: int  # the ending reservation (its loadlog gets the row)
    computer_id: int
    image_id: int
    imagerevision_id: int
    imagename: str
    management_node_id: int
    laststate: str  # the ending request's laststate, copied as vcld does


def vclreload_user(s: Session) -> int:
    """``vclreload``'s user id; VclDataError when the site has none (checked before a capture)."""
    user_id = s.execute(
        select(m.User.id).where(m.User.unityid == "vclreload").order_by(m.User.id).limit(1)
    ).scalar_one_or_none()
    if user_id is None:
        raise VclDataError("user 'vclreload' does not exist")
    return int(user_id)


def insert_reload_request(
    s: Session, ids: VclIds, t: ReloadTarget, now: datetime, *, force: bool = False
) -> int:
    """Computer -> ``reload`` + a ``reload`` request (start now, end +30 min) and its reservation.
    Returns the new request id, or 0 when the computer is already in a reload state (vcld skips).
    ``force``: also for a computer left ``reloading`` by a load that will not finish it (a load the
    user cancelled, or whose task died after the cancel). ``t.reservation_id`` 0: no loadlog row
    (the ending reservation is gone)."""
    comp = s.execute(
        select(m.State.name, m.Computer.type)
        .join(m.State, m.State.id == m.Computer.stateid)
        .where(m.Computer.id == t.computer_id)
    ).one_or_none()
    if comp is None:
        raise VclDataError(f"computer {t.computer_id} not found")
    if "reload" in comp[0] and not (force and comp[0] == "reloading"):
        return 0
    user_id = vclreload_user(s)
    set_computer_state(s, ids, t.computer_id, "reload")
    if t.reservation_id:
        insert_loadlog(
            s,
            ids,
            t.reservation_id,
            t.computer_id,
            "loadimagevmware" if comp[1] == "virtualmachine" else "info",
            info=f"inserted reload request for {t.imagename}",
            now=now,
        )
    new_req = dml(
        s,
        insert(m.Request).values(
            stateid=ids.state(s, "reload"),
            laststateid=ids.state(s, t.laststate),
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
            computerid=t.computer_id,
            imageid=t.image_id,
            imagerevisionid=t.imagerevision_id,
            managementnodeid=t.management_node_id,
        )
    )
    return request_id


__all__ = ["ReloadTarget", "insert_reload_request", "vclreload_user"]
