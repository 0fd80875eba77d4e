"""Claims tied to a Celery task id, so that no request stays ``pending`` for good.

vcld inserts a ``begin`` computerloadlog row before it forks the process of a reservation; here that
row is written in the claim's own transaction and names the Celery task that owns the claim:
``additionalinfo = 'celery task <id> sent=<0|1> requeued=<n>'``. The dispatcher marks it ``sent``
once ``send_task`` returned; its sweep (:mod:`worker.db.sweep`) finds claims whose task is lost and
re-enqueues them under a new task id (a guarded UPDATE of this row: exactly once) or fails them.
A task whose id is not the claim's any more (superseded) treats the request as handled.
``state_exit`` removes the row with the request's other loadlog rows.

Functions take an open session; :class:`~worker.db.store.VclStore` owns the transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.load import fail_request
from worker.db.loadlog import insert_loadlog, update_log_ending
from worker.db.requests import ClaimOutcome, VclIds, claim, dml, request_state_ids, unclaim

INFO_RE = re.compile(r"^celery task (?P<task>\S*) sent=(?P<sent>[01]) requeued=(?P<requeued>\d+)$")
INFO_PREFIX = "celery task "


#: Longest ``IN (…)`` list per statement: far below MariaDB's packet limit, few statements per pass.
CHUNK = 1000
_T = TypeVar("_T")


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    row_id: int
    task_id: str
    _: KW_ONLY
    sent: bool
    requeued: int
    info: str
    timestamp: datetime | None


def claim_info(task_id: str, *, sent: bool, requeued: int) -> str:
    return f"{INFO_PREFIX}{task_id} sent={int(sent)} requeued={requeued}"


def claim_record(s: Session, ids: VclIds, reservation_id: int) -> ClaimRecord | None:
    """The newest claim row of the reservation, or ``None``."""
    return claim_records(s, ids, [reservation_id]).get(reservation_id)


def claim_records(s: Session, ids: VclIds, reservation_ids: Sequence[int]) -> dict[int, ClaimRecord]:
    """The newest claim row of each reservation that has one, in one query per :data:`CHUNK`
    reservations (the sweep reads all of a pass's claims at once)."""
    out: dict[int, ClaimRecord] = {}
    for part in chunks(reservation_ids):
        rows = s.execute(
            select(
                m.ComputerLoadLog.id,
                m.ComputerLoadLog.reservationid,
                m.ComputerLoadLog.additionalinfo,
                m.ComputerLoadLog.timestamp,
            )
            .where(
                m.ComputerLoadLog.reservationid.in_(part),
                m.ComputerLoadLog.loadstateid == ids.loadstate(s, "begin"),
                m.ComputerLoadLog.additionalinfo.like(f"{INFO_PREFIX}%"),
            )
            .order_by(m.ComputerLoadLog.id)
        ).all()
        newest = {int(res): (row_id, info, ts) for row_id, res, info, ts in rows}
        for res_id, (row_id, info, ts) in newest.items():
            found = INFO_RE.match(info or "")
            if found is not None:
                out[res_id] = ClaimRecord(
                    int(row_id), found["task"], sent=found["sent"] == "1", requeued=int(found["requeued"]),
                    info=str(info), timestamp=ts,
                )  # fmt: skip
    return out


def _computer_of(s: Session, reservation_id: int) -> int | None:
    cid = s.execute(
        select(m.Reservation.computerid).where(m.Reservation.id == reservation_id)
    ).scalar_one_or_none()
    return None if cid is None else int(cid)


def record_claim(
    s: Session, ids: VclIds, reservation_id: int, task_id: str, *, sent: bool, requeued: int = 0
) -> None:
    computer_id = _computer_of(s, reservation_id)
    if computer_id is not None:
        insert_loadlog(
            s,
            ids,
            reservation_id,
            computer_id,
            "begin",
            info=claim_info(task_id, sent=sent, requeued=requeued),
            now=db_now(s),
        )


def claim_for_task(
    s: Session,
    ids: VclIds,
    request_id: int,
    reservation_id: int,
    from_state: str,
    *,
    task_id: str,
    sent: bool,
) -> ClaimOutcome:
    """:func:`~worker.db.requests.claim` plus the claim row naming ``task_id``. RESUMED only for the
    claim's own task (or a claim without a row, which this task adopts); another task's claim is LOST."""
    outcome = claim(s, ids, request_id, from_state)
    if outcome is ClaimOutcome.CLAIMED:
        record_claim(s, ids, reservation_id, task_id, sent=sent)
    elif outcome is ClaimOutcome.RESUMED:
        rec = claim_record(s, ids, reservation_id)
        if rec is None:
            record_claim(s, ids, reservation_id, task_id, sent=True)
        elif rec.task_id != task_id:
            return ClaimOutcome.LOST
    return outcome


def owns_claim(s: Session, ids: VclIds, reservation_id: int, task_id: str) -> bool:
    """False when the claim row names another task (the sweep re-enqueued the request)."""
    rec = claim_record(s, ids, reservation_id)
    return rec is None or rec.task_id == task_id


def mark_sent(s: Session, ids: VclIds, reservation_id: int, task_id: str) -> bool:
    rec = claim_record(s, ids, reservation_id)
    if rec is None or rec.task_id != task_id or rec.sent:
        return False
    return _swap(s, rec, claim_info(task_id, sent=True, requeued=rec.requeued))


def retarget(s: Session, ids: VclIds, reservation_id: int, old: ClaimRecord, new_task_id: str) -> bool:
    """Hand the claim to ``new_task_id`` (not yet sent), only if the row is still exactly ``old``:
    of two sweeping dispatchers exactly one wins."""
    return _swap(s, old, claim_info(new_task_id, sent=False, requeued=old.requeued + 1))


def _swap(s: Session, rec: ClaimRecord, info: str) -> bool:
    res = dml(
        s,
        update(m.ComputerLoadLog)
        .where(m.ComputerLoadLog.id == rec.row_id, m.ComputerLoadLog.additionalinfo == rec.info)
        .values(additionalinfo=info)
        .execution_options(synchronize_session=False),
    )
    return res.rowcount == 1


def drop_claim(s: Session, ids: VclIds, request_id: int, reservation_id: int, from_state: str) -> bool:
    """Undo :func:`claim_for_task` (the task could not be enqueued): the request back to
    ``from_state`` and its claim rows gone."""
    s.execute(
        delete(m.ComputerLoadLog)
        .where(
            m.ComputerLoadLog.reservationid == reservation_id,
            m.ComputerLoadLog.loadstateid == ids.loadstate(s, "begin"),
            m.ComputerLoadLog.additionalinfo.like(f"{INFO_PREFIX}%"),
        )
        .execution_options(synchronize_session=False)
    )
    return unclaim(s, ids, request_id, from_state)


def fail_stranded(s: Session, ids: VclIds, reservation_id: int, task_id: str | None, message: str) -> bool:
    """End a claimed reservation whose task cannot record its own outcome (hard time limit, retries
    exhausted, redeliveries exhausted, task lost) the way vcld's ``reservation_failed`` does:
    request ``failed/<state>`` (``maintenance`` for image), computer ``failed`` (``maintenance``),
    ``failed`` loadlog row, log ending ``failed`` for new, claim rows removed and ``exited``.

    Only while the request is still ``pending`` and, with ``task_id``, still claimed by that task:
    a task superseded by the sweep never fails its successor. True when this call failed it."""
    row = s.execute(
        select(m.Reservation.requestid, m.Reservation.computerid).where(m.Reservation.id == reservation_id)
    ).one_or_none()
    if row is None:
        return False
    request_id, computer_id = int(row[0]), int(row[1])
    cur = request_state_ids(s, request_id)
    if cur is None or cur.stateid != ids.state(s, "pending"):
        return False
    if task_id is not None and not owns_claim(s, ids, reservation_id, task_id):
        return False
    claimed_from = ids.state_name(s, cur.laststateid)
    fail_request(s, ids, request_id, reservation_id, message)
    now = db_now(s)
    if claimed_from in ("new", "reserved"):
        update_log_ending(s, request_id, "failed", now)
    s.execute(
        delete(m.ComputerLoadLog)
        .where(
            m.ComputerLoadLog.reservationid == reservation_id,
            m.ComputerLoadLog.loadstateid == ids.loadstate(s, "begin"),
        )
        .execution_options(synchronize_session=False)
    )
    insert_loadlog(s, ids, reservation_id, computer_id, "exited", info="", now=now)
    return True


__all__ = [
    "CHUNK",
    "ClaimRecord",
    "chunks",
    "claim_for_task",
    "claim_info",
    "claim_record",
    "claim_records",
    "drop_claim",
    "fail_stranded",
    "mark_sent",
    "owns_claim",
    "record_claim",
    "retarget",
]
