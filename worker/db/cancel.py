"""How a reservation ends while the worker is in it or past its end time.

**Cancel during a load** (vcld: ``new.pm`` step 7 and ``State.pm:reservation_failed`` "if the
request was deleted meanwhile"). The user ends a reservation through the web while its load runs:
``deleteRequest`` turns ``pending/new`` into ``deleted/reserved`` (a request whose start is still in
the future is deleted outright). The load sees it at its next step and calls :func:`hand_back`,
which completes the request (``complete/deleted``, as ``state_exit`` does for an old state
``deleted``) and gives the computer back according to how far the load got (:class:`HandBack`).
Exactly one party completes a deleted request: the load here, or the dispatcher's reclaim
(:mod:`worker.db.reclaim`), which acts only while no task holds the computer's lock; both move it
with the same guarded ``UPDATE … WHERE stateid = deleted``.

**End time** (vcld's ``inuse.pm`` at the end: ``state_exit('timeout', 'timeout', 'EOR')``):
:func:`time_out` turns a ``reserved``/``inuse`` request whose end has passed into ``timeout``; the
dispatcher's reclaim then reloads the computer onto a fresh disk.

Functions take an open session; :class:`~worker.db.store.VclStore` commits.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.load import set_computer_state
from worker.db.loadlog import insert_loadlog, state_exit_rows, update_log_ending
from worker.db.reads import computer_state
from worker.db.reload_request import ReloadTarget, insert_reload_request
from worker.db.requests import VclIds, guarded_update, request_state_ids
from worker.reservation import Reservation

#: Request states whose end time ends them (inuse.pm; reserved.pm's wait is bounded by it too).
ENDABLE_STATES = ("reserved", "inuse")


class HandBack(StrEnum):
    """What the computer becomes when a load stands down for a deleted request."""

    LEAVE = "left"  # the load never touched it (stood down before ``start_load``)
    RESTORE = "available"  # ``reloading`` set, the disk untouched: ``available`` again
    LOADED = "loaded"  # loaded and ready, never handed to the user: ``available`` (new.pm step 7)
    RELOAD = "reload"  # the disk was touched and not finished: a reload request (a fresh disk)


class CancelOutcome(StrEnum):
    AVAILABLE = "available"
    RELOAD = "reload"
    LEFT = "left"  # computer untouched (not ours to change, or in maintenance)
    LOST = "lost"  # the request was completed by someone else (the dispatcher's reclaim)


def hand_back(s: Session, ids: VclIds, r: Reservation, how: HandBack, message: str) -> CancelOutcome:
    """Complete the deleted request of ``r`` and give its computer back (see the module doc).

    A request that is gone (deleted by the web before its start, or reclaimed and removed) is not
    completed; its computer is handed back only if it is still ``reloading`` (this load's state: the
    caller holds the computer's lock)."""
    cur = request_state_ids(s, r.request_id)
    deleted, complete = ids.state(s, "deleted"), ids.state(s, "complete")
    now = db_now(s)
    cstate = computer_state(s, r.computer_id)
    laststate = r.request_state
    if cur is None:
        if cstate != "reloading":
            return CancelOutcome.LOST
    elif cur.stateid != deleted or not guarded_update(
        s, r.request_id, expected=deleted, expected_last=cur.laststateid, stateid=complete,
        laststateid=deleted,
    ):  # fmt: skip
        return CancelOutcome.LOST
    else:
        laststate = ids.state_name(s, cur.laststateid)
        insert_loadlog(s, ids, r.reservation_id, r.computer_id, "deleted", info=message[:4000], now=now)
    outcome = _computer_back(s, ids, r, how, cstate, laststate=laststate, exists=cur is not None)
    if cur is not None:
        # state_exit for the old state ``deleted``: every loadlog row of the request, then ``exited``.
        state_exit_rows(
            s, ids, request_id=r.request_id, reservation_id=r.reservation_id, computer_id=r.computer_id,
            old_state="deleted", now=now,
        )  # fmt: skip
    return outcome


def _computer_back(
    s: Session, ids: VclIds, r: Reservation, how: HandBack, cstate: str, *, laststate: str, exists: bool
) -> CancelOutcome:
    if how is HandBack.LEAVE or cstate == "maintenance":
        return CancelOutcome.LEFT
    if how is HandBack.LOADED:
        set_computer_state(
            s, ids, r.computer_id, "available", currentimageid=r.image_id, imagerevisionid=r.imagerevision_id
        )
        return CancelOutcome.AVAILABLE
    if how is HandBack.RESTORE:
        set_computer_state(s, ids, r.computer_id, "available")
        return CancelOutcome.AVAILABLE
    target = ReloadTarget(
        r.reservation_id if exists else 0, r.computer_id, r.image_id, r.imagerevision_id,
        r.imagerevision_imagename, r.management_node_id, laststate,
    )  # fmt: skip
    insert_reload_request(s, ids, target, db_now(s), force=True)
    return CancelOutcome.RELOAD


def time_out(s: Session, ids: VclIds, request_id: int, reservation_id: int, state: str) -> bool:
    """``inuse.pm`` at the end time: request ``timeout/<state>``, computer ``timeout`` (unless in
    maintenance), ``log.ending`` EOR, state_exit's loadlog rows. Guarded on ``state`` and on the
    end time (read under a row lock): False when the user ended or extended it meanwhile, or another
    dispatcher ended it first."""
    if state not in ENDABLE_STATES:
        raise ValueError(f"time_out: {state!r} is not one of {ENDABLE_STATES}")
    now = db_now(s)
    # The row locked first: an extension the web commits meanwhile waits, or is seen here.
    end = s.execute(
        select(m.Request.end).where(m.Request.id == request_id).with_for_update()
    ).scalar_one_or_none()
    if end is None or end > now:
        return False
    state_id = ids.state(s, state)
    if not guarded_update(
        s, request_id, expected=state_id, stateid=ids.state(s, "timeout"), laststateid=state_id
    ):
        return False
    computer_id = s.execute(
        select(m.Reservation.computerid).where(m.Reservation.id == reservation_id)
    ).scalar_one()
    if computer_state(s, computer_id) != "maintenance":
        set_computer_state(s, ids, computer_id, "timeout")
    update_log_ending(s, request_id, "EOR", now)
    state_exit_rows(
        s, ids, request_id=request_id, reservation_id=reservation_id, computer_id=computer_id,
        old_state=state, now=now,
    )  # fmt: skip
    return True


__all__ = ["ENDABLE_STATES", "CancelOutcome", "HandBack", "hand_back", "time_out"]
