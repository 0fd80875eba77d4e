"""Exactly what VCL's PHP web front end writes when a user ends or extends a reservation, for tests
that cannot drive the real web (``../shared/vcl/web/vcl-web.tar.gz``, Apache VCL 2.5.1).

* :func:`end_request`: ``web/.ht-inc/utils.php:deleteRequest`` (called by ``XMLRPCendRequest`` and
  the reservations page's "Delete Reservation"): for a started request, one ``UPDATE request SET
  stateid = 1 (deleted), laststateid = …`` chosen by its branches, then ``addChangeLogEntry(logid,
  NULL, now, NULL, NULL, 'released')``; a request not yet started is deleted outright (``DELETE FROM
  request``/``reservation``, changelog ending ``deleted``).
* :func:`extend_request`: ``xmlrpcWrappers.php:XMLRPCextendRequest``'s success path: the new end
  (end + minutes, rounded up to 15 min) through ``utils.php:updateRequest`` (``UPDATE request SET
  start, end, datemodified = NOW()``) and ``addChangeLogEntry(logid, NULL, end, start, NULL, NULL, 1)``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import models as m

# state ids as the PHP code hard-codes them (vcl.sql's seeds)
_DELETED, _RESERVED, _INUSE, _NEW, _PENDING = 1, 3, 8, 13, 14


def _deleted_laststate(state: int, last: int) -> int | None:
    """``deleteRequest``'s branches for a started request: the new laststate (None: unchanged)."""
    if state == _NEW or (state == _PENDING and last == _NEW):
        return _RESERVED
    if (state == _RESERVED and last == _NEW) or (state == _PENDING and last == _RESERVED):
        return _RESERVED
    if (state == _INUSE and last == _RESERVED) or (state == _PENDING and last == _INUSE):
        return _INUSE
    if state == _PENDING:
        return None
    return state if state > 0 else _DELETED


def _changelog(s: Session, logid: int, *, end: datetime | None, start: datetime | None, ending: str | None,
               wasavailable: int = -1) -> None:  # fmt: skip
    """``utils.php:addChangeLogEntry`` for the arguments the two callers pass (no IP, no computer)."""
    log = s.execute(
        text("SELECT start, initialend, wasavailable, ending FROM log WHERE id = :id"), {"id": logid}
    ).one()
    now = s.execute(text("SELECT NOW()")).scalar_one()
    sets: dict[str, object] = {}
    row_start = start if start is not None and start != log.start else None
    if row_start is not None and wasavailable != 0 and log.start > now:
        sets["start"] = start
    row_end = end if end is not None and end != log.initialend else None
    if row_end is not None and wasavailable != 0:
        if log.start > now:
            sets["initialend"] = end
        sets["finalend"] = end
    row_wasavailable = wasavailable if wasavailable not in (-1, log.wasavailable) else None
    if row_wasavailable is not None:
        sets["wasavailable"] = wasavailable
    if ending is not None and ending != log.ending:
        sets["ending"] = ending
    if row_start is None and row_end is None and row_wasavailable is None and not sets:
        return
    s.execute(
        text(
            "INSERT INTO changelog (logid, start, end, computerid, remoteIP, wasavailable, timestamp)"
            " VALUES (:logid, :start, :end, NULL, NULL, :wa, NOW())"
        ),
        {"logid": logid, "start": row_start, "end": row_end, "wa": row_wasavailable},
    )
    if sets:
        s.execute(update(m.Log).where(m.Log.id == logid).values(**sets))


def end_request(sf: sessionmaker[Session], request_id: int) -> str:
    """The user ends the reservation (``deleteRequest``). Returns ``updated`` or ``deleted``."""
    with sf.begin() as s:
        rq = s.execute(
            text("SELECT stateid, laststateid, start, logid FROM request WHERE id = :id"), {"id": request_id}
        ).one()
        now = s.execute(text("SELECT NOW()")).scalar_one()
        if rq.start < now:
            last = _deleted_laststate(int(rq.stateid), int(rq.laststateid))
            if last is None:
                s.execute(text("UPDATE request SET stateid = 1 WHERE id = :id"), {"id": request_id})
            else:
                s.execute(
                    text("UPDATE request SET stateid = 1, laststateid = :l WHERE id = :id"),
                    {"l": last, "id": request_id},
                )
            if rq.logid:
                _changelog(s, int(rq.logid), end=now, start=None, ending="released")
            return "updated"
        s.execute(text("DELETE FROM serverrequest WHERE requestid = :id"), {"id": request_id})
        s.execute(text("DELETE FROM request WHERE id = :id"), {"id": request_id})
        s.execute(text("DELETE FROM reservation WHERE requestid = :id"), {"id": request_id})
        if rq.logid:
            _changelog(s, int(rq.logid), end=None, start=None, ending="deleted")
        return "deleted"


def extend_request(sf: sessionmaker[Session], request_id: int, minutes: int) -> datetime:
    """``XMLRPCextendRequest(request_id, minutes)`` once its checks passed; returns the new end."""
    with sf.begin() as s:
        rq = s.execute(text("SELECT start, end, logid FROM request WHERE id = :id"), {"id": request_id}).one()
        new_end = rq.end + timedelta(minutes=minutes)
        seconds = int(new_end.timestamp())
        if seconds % 900:
            new_end = datetime.fromtimestamp(seconds - seconds % 900 + 900)
        s.execute(
            text("UPDATE request SET start = :start, end = :end, datemodified = NOW() WHERE id = :id"),
            {"start": rq.start, "end": new_end, "id": request_id},
        )
        if rq.logid:
            _changelog(s, int(rq.logid), end=new_end, start=rq.start, ending=None, wasavailable=1)
        return datetime.fromtimestamp(new_end.timestamp())


__all__ = ["end_request", "extend_request"]
