"""Claims of one dispatcher pass, in a constant number of statements however many requests are due.

The single-request functions of :mod:`worker.db.claims` cost five to seven round trips each; a pass
over 1,000 due requests spent most of its time there. Here a whole pass claims with one locking
``SELECT … FOR UPDATE SKIP LOCKED`` (requests another dispatcher is claiming right now are left to
it), one guarded ``UPDATE request … WHERE id IN (…) AND stateid = :expected`` per state claimed
from, and one multi-row ``INSERT`` of the ``begin`` rows naming each request's Celery task; the
rows are marked ``sent`` with one ``UPDATE`` after publishing. The row format and the guards are the
ones of :mod:`worker.db.claims`, so the sweep and the tasks cannot tell a batch claim from a single
one.

Functions take an open session; :class:`~worker.db.store.VclStore` owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.claims import chunks, claim_info
from worker.db.engine import db_now
from worker.db.errors import StateConflictError
from worker.db.requests import VclIds, dml


@dataclass(frozen=True, slots=True)
class ClaimWish:
    """A due request the dispatcher wants to hand to Celery task ``task_id``."""

    request_id: int
    reservation_id: int
    computer_id: int
    from_state: str
    task_id: str

    @property
    def unsent_info(self) -> str:
        return claim_info(self.task_id, sent=False, requeued=0)


def _by_state(wishes: Iterable[ClaimWish]) -> dict[str, list[ClaimWish]]:
    groups: dict[str, list[ClaimWish]] = defaultdict(list)
    for w in wishes:
        groups[w.from_state].append(w)
    return groups


def claim_many(s: Session, ids: VclIds, wishes: Sequence[ClaimWish]) -> list[ClaimWish]:
    """Claim every request of ``wishes`` still in its ``from_state`` (``<from>`` → ``pending/<from>``)
    and write its ``begin`` row naming the task, not yet sent. Returns the wishes claimed; a request
    that changed state or that another transaction holds locked is left out (vcld's LOST)."""
    if not wishes:
        return []
    pending = ids.state(s, "pending")
    locked: dict[int, int] = {}
    for part in chunks(wishes):
        rows = s.execute(
            select(m.Request.id, m.Request.stateid)
            .where(m.Request.id.in_([w.request_id for w in part]))
            .with_for_update(skip_locked=True)
        ).all()
        locked.update((int(rid), int(sid)) for rid, sid in rows)
    won = [w for w in wishes if locked.get(w.request_id) == ids.state(s, w.from_state)]
    for from_state, group in _by_state(won).items():
        from_id = ids.state(s, from_state)
        for part in chunks(group):
            request_ids = [w.request_id for w in part]
            changed = dml(
                s,
                update(m.Request)
                .where(m.Request.id.in_(request_ids), m.Request.stateid == from_id)
                .values(stateid=pending, laststateid=from_id)
                .execution_options(synchronize_session=False),
            ).rowcount
            if changed != len(set(request_ids)):
                # The rows are locked by this transaction: only a broken lock could get here.
                raise StateConflictError(
                    f"claimed {changed} of {len(request_ids)} locked {from_state} requests"
                )
    if won:
        now, begin = db_now(s), ids.loadstate(s, "begin")
        s.execute(
            insert(m.ComputerLoadLog),
            [
                {
                    "reservationid": w.reservation_id,
                    "computerid": w.computer_id,
                    "loadstateid": begin,
                    "timestamp": now,
                    "additionalinfo": w.unsent_info,
                }
                for w in won
            ],
        )
    return won


def _begin_rows_of(s: Session, ids: VclIds, claimed: Sequence[ClaimWish]) -> list[ColumnElement[bool]]:
    return [
        m.ComputerLoadLog.reservationid.in_([w.reservation_id for w in claimed]),
        m.ComputerLoadLog.loadstateid == ids.loadstate(s, "begin"),
        m.ComputerLoadLog.additionalinfo.in_([w.unsent_info for w in claimed]),
    ]


def mark_many_sent(s: Session, ids: VclIds, claimed: Sequence[ClaimWish]) -> int:
    """Mark the ``begin`` rows of ``claimed`` sent, each only while it is still exactly the unsent row
    of its own task (the task id makes every info unique); returns how many were marked."""
    marked = 0
    for part in chunks(claimed):
        marked += dml(
            s,
            update(m.ComputerLoadLog)
            .where(*_begin_rows_of(s, ids, part))
            .values(additionalinfo=func.replace(m.ComputerLoadLog.additionalinfo, " sent=0 ", " sent=1 "))
            .execution_options(synchronize_session=False),
        ).rowcount
    return marked


def drop_many(s: Session, ids: VclIds, claimed: Sequence[ClaimWish]) -> None:
    """Undo :func:`claim_many` for tasks that were never published: their ``begin`` rows go and each
    request goes back to the state it was claimed from (only while still ``pending/<from>``)."""
    pending = ids.state(s, "pending")
    for part in chunks(claimed):
        s.execute(
            delete(m.ComputerLoadLog)
            .where(*_begin_rows_of(s, ids, part))
            .execution_options(synchronize_session=False)
        )
    for from_state, group in _by_state(claimed).items():
        from_id = ids.state(s, from_state)
        for part in chunks(group):
            s.execute(
                update(m.Request)
                .where(
                    m.Request.id.in_([w.request_id for w in part]),
                    m.Request.stateid == pending,
                    m.Request.laststateid == from_id,
                )
                .values(stateid=from_id)
                .execution_options(synchronize_session=False)
            )


__all__ = ["ClaimWish", "claim_many", "drop_many", "mark_many_sent"]
