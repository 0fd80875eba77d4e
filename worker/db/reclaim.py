"""vcld's ``reclaim.pm`` for VM computers (reference 3.5): a request the user ended (``deleted``)
or that expired (``timeout``).

One transaction per request: the request goes ``complete/<deleted|timeout>`` (guarded on its state,
so two dispatchers reclaim it once); a reservation that was used (laststate not ``new``) gets the
computer ``reload`` and a ``reload`` request by ``vclreload`` for the next image (the predictive
default: the same revision), which the dispatcher then runs like any reload (a fresh disk); one that
ended before it loaded (laststate ``new``) needs no reload and the computer is ``available`` again.
A computer in ``maintenance`` or ``reload`` (a reload request already waits) is left as it is; one
still ``reloading`` gets a reload too: vcld leaves it to its live new.pm process, but the dispatcher
calls :func:`reclaim` only once no task holds the computer's lock (a load that sees its request
deleted hands the computer back itself, :mod:`worker.db.cancel`), so the load that set it is over
and its disk may be half built. What vcld does inside the guest
(``os->post_reservation``, sanitize) has no counterpart here: the reload replaces the disk.

Functions take an open session; :class:`~worker.db.store.VclStore` commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.load import set_computer_state
from worker.db.loadlog import insert_loadlog
from worker.db.reload_request import ReloadTarget, insert_reload_request
from worker.db.requests import VclIds, guarded_update

RECLAIM_STATES = ("deleted", "timeout")


@dataclass(frozen=True, slots=True)
class Reclaimed:
    request_id: int
    outcome: str  # "reload", "available", "left" (maintenance/reload), "lost" (not ours any more)
    reload_request_id: int = 0


def reclaim(s: Session, ids: VclIds, request_id: int, reservation_id: int, state: str) -> Reclaimed:
    if state not in RECLAIM_STATES:
        raise ValueError(f"reclaim: {state!r} is not one of {RECLAIM_STATES}")
    cst = aliased(m.State, name="cst")
    lst = aliased(m.State, name="lst")
    row = s.execute(
        select(
            lst.name,
            m.Reservation.computerid,
            m.Reservation.imageid,
            m.Reservation.imagerevisionid,
            m.ImageRevision.imagename,
            m.Reservation.managementnodeid,
            cst.name,
        )
        .select_from(m.Reservation)
        .join(m.Request, m.Request.id == m.Reservation.requestid)
        .join(lst, lst.id == m.Request.laststateid)
        .join(m.Computer, m.Computer.id == m.Reservation.computerid)
        .join(cst, cst.id == m.Computer.stateid)
        .outerjoin(m.ImageRevision, m.ImageRevision.id == m.Reservation.imagerevisionid)
        .where(m.Reservation.id == reservation_id, m.Request.id == request_id)
    ).one_or_none()
    state_id = ids.state(s, state)
    if row is None or not guarded_update(
        s, request_id, expected=state_id, stateid=ids.state(s, "complete"), laststateid=state_id
    ):
        return Reclaimed(request_id, "lost")
    laststate, computer_id, image_id, rev_id, imagename, mn_id, computer_state = row
    now = db_now(s)
    insert_loadlog(s, ids, reservation_id, computer_id, state, info=f"reservation {state}", now=now)
    target = ReloadTarget(reservation_id, computer_id, image_id, rev_id, imagename or "", mn_id, laststate)
    if computer_state == "reloading":
        # The dispatcher reclaims only when no task holds the computer's lock: the load that set
        # ``reloading`` is over (cancelled, or its task died) and left a disk in any state. A fresh one.
        new_request = insert_reload_request(s, ids, target, now, force=True)
        outcome = "reload"
    elif computer_state == "maintenance" or "reload" in computer_state:
        outcome, new_request = "left", 0
    elif laststate == "new":
        set_computer_state(s, ids, computer_id, "available")
        outcome, new_request = "available", 0
    else:
        new_request = insert_reload_request(s, ids, target, now)
        outcome = "reload"
    # state_exit for an old state other than new/reserved: every loadlog row of the request, then exited.
    res_ids = select(m.Reservation.id).where(m.Reservation.requestid == request_id).scalar_subquery()
    s.execute(
        delete(m.ComputerLoadLog)
        .where(and_(m.ComputerLoadLog.reservationid.in_(res_ids)))
        .execution_options(synchronize_session=False)
    )
    insert_loadlog(s, ids, reservation_id, computer_id, "exited", info="", now=now)
    return Reclaimed(request_id, outcome, new_request)


__all__ = ["RECLAIM_STATES", "Reclaimed", "reclaim"]
