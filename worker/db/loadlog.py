"""``computerloadlog`` and ``log`` rows: vcld's ``insertloadlog``, ``update_log_ending`` and the
loadlog cleanup of ``State.pm:state_exit``. Functions take an open session; the caller commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, insert, select, update
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.requests import VclIds
from worker.reservation import Reservation


@dataclass(frozen=True, slots=True)
class LoadLogEntry:
    id: int
    loadstatename: str
    timestamp: datetime | None
    additionalinfo: str | None


def insert_loadlog(
    s: Session, ids: VclIds, reservation_id: int, computer_id: int, name: str, *, info: str, now: datetime
) -> None:
    """``utils.pm:insertloadlog``."""
    s.execute(
        insert(m.ComputerLoadLog).values(
            reservationid=reservation_id,
            computerid=computer_id,
            loadstateid=ids.loadstate(s, name),
            timestamp=now,
            additionalinfo=info,
        )
    )


def loadlog_entries(s: Session, reservation_id: int) -> list[LoadLogEntry]:
    rows = s.execute(
        select(
            m.ComputerLoadLog.id,
            m.ComputerLoadState.loadstatename,
            m.ComputerLoadLog.timestamp,
            m.ComputerLoadLog.additionalinfo,
        )
        .join(m.ComputerLoadState, m.ComputerLoadState.id == m.ComputerLoadLog.loadstateid)
        .where(m.ComputerLoadLog.reservationid == reservation_id)
        .order_by(m.ComputerLoadLog.id)
    ).all()
    return [LoadLogEntry(r[0], r[1], r[2], r[3]) for r in rows]


def update_log_ending(s: Session, request_id: int, ending: str, now: datetime) -> None:
    """``utils.pm:update_log_ending`` (only when ``request.logid`` is set)."""
    logid = s.execute(select(m.Request.logid).where(m.Request.id == request_id)).scalar_one_or_none()
    if logid is not None:
        s.execute(
            update(m.Log)
            .where(m.Log.id == logid)
            .values(ending=ending, finalend=now)
            .execution_options(synchronize_session=False)
        )


def state_exit_loadlog(s: Session, ids: VclIds, r: Reservation, old_state: str, now: datetime) -> None:
    """``State.pm:state_exit`` steps 5-6 for the parent: delete ``begin`` rows (old state
    new/reserved) or all rows of all the request's reservations, then insert ``exited``."""
    state_exit_rows(
        s, ids, request_id=r.request_id, reservation_id=r.reservation_id, computer_id=r.computer_id,
        old_state=old_state, now=now,
    )  # fmt: skip


def state_exit_rows(
    s: Session, ids: VclIds, *, request_id: int, reservation_id: int, computer_id: int, old_state: str,
    now: datetime,
) -> None:  # fmt: skip
    """:func:`state_exit_loadlog` for a request known by its ids (no :class:`Reservation` read)."""
    res_ids = select(m.Reservation.id).where(m.Reservation.requestid == request_id)
    cond: ColumnElement[bool] = m.ComputerLoadLog.reservationid.in_(res_ids.scalar_subquery())
    if old_state in ("new", "reserved"):
        cond = and_(cond, m.ComputerLoadLog.loadstateid == ids.loadstate(s, "begin"))
    s.execute(delete(m.ComputerLoadLog).where(cond).execution_options(synchronize_session=False))
    insert_loadlog(s, ids, reservation_id, computer_id, "exited", info="", now=now)


__all__ = [
    "LoadLogEntry",
    "insert_loadlog",
    "loadlog_entries",
    "state_exit_loadlog",
    "state_exit_rows",
    "update_log_ending",
]
