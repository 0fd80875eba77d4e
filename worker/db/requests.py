"""Request state changes, guarded like vcld's ``utils.pm:update_request_state``.

Every change of ``request.stateid`` goes through :func:`guarded_update` (``UPDATE request ...
WHERE id = :id AND stateid = :expected [AND laststateid = :expected_last]``) and every read of a
request's state ids through :func:`request_state_ids`. A worker only moves a request out of
``pending`` while ``laststateid`` is still the state it claimed the request from; when the guard
matches no row and the request is already in the target state, the change is a no-op (a redelivered
Celery task finishing twice), otherwise :class:`StateConflictError`.

The functions here take an open session and never commit: the caller (:class:`VclStore`) owns the
transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.errors import StateConflictError, VclDataError
from worker.reservation import Reservation

#: ``state`` rows of vcl.sql (id, name): the names drive the scheduler's SQL ``IN`` lists and the
#: SQLite demo inserts the same rows with the same ids.
VCL_STATES: tuple[tuple[int, str], ...] = (
    (1, "deleted"), (2, "available"), (3, "reserved"), (4, "classreserved"), (5, "failed"),
    (6, "reloading"), (7, "imageinuse"), (8, "inuse"), (9, "cleaning"), (10, "maintenance"),
    (11, "timeout"), (12, "complete"), (13, "new"), (14, "pending"), (15, "imageprep"), (16, "image"),
    (17, "makeproduction"), (18, "tomaintenance"), (19, "reload"), (20, "vmhostinuse"),
    (21, "tovmhostinuse"), (22, "tohpc"), (23, "hpc"), (24, "checkpoint"), (25, "serverinuse"),
    (26, "rebootsoft"), (27, "reinstall"), (28, "reboothard"), (29, "servermodified"),
)  # fmt: skip
VCL_STATE_NAMES: tuple[str, ...] = tuple(name for _, name in VCL_STATES)


class ClaimOutcome(enum.Enum):
    """Result of :meth:`VclStore.claim_request`."""

    CLAIMED = "claimed"  # this call moved the request to pending
    RESUMED = "resumed"  # already pending with laststate == from_state (redelivered task)
    LOST = "lost"  # someone else owns it / it changed state / it is gone


def dml(s: Session, stmt: Any) -> CursorResult[Any]:
    """Execute an INSERT/UPDATE/DELETE and return the cursor result (rowcount, inserted pk)."""
    return cast(CursorResult[Any], s.execute(stmt))


class VclIds:
    """``state`` and ``computerloadstate`` name -> id. Both are static seed data, so they are read
    once per process instead of being joined into every statement."""

    def __init__(self) -> None:
        self._states: dict[str, int] | None = None
        self._loadstates: dict[str, int] | None = None

    def states(self, s: Session) -> dict[str, int]:
        if self._states is None:
            self._states = {n: i for n, i in s.execute(select(m.State.name, m.State.id)).all()}
        return self._states

    def state(self, s: Session, name: str) -> int:
        try:
            return self.states(s)[name]
        except KeyError:
            raise VclDataError(f"state {name!r} does not exist in table state") from None

    def state_name(self, s: Session, state_id: int) -> str:
        for name, sid in self.states(s).items():
            if sid == state_id:
                return name
        return f"<unknown state id {state_id}>"

    def loadstate(self, s: Session, name: str) -> int:
        # Re-read on a miss: an admin may add a load state while the worker runs.
        if self._loadstates is None or name not in self._loadstates:
            rows = s.execute(select(m.ComputerLoadState.loadstatename, m.ComputerLoadState.id)).all()
            self._loadstates = {n: i for n, i in rows}
        try:
            return self._loadstates[name]
        except KeyError:
            raise VclDataError(f"computerloadstate {name!r} does not exist") from None


@dataclass(frozen=True, slots=True)
class RequestStateIds:
    stateid: int
    laststateid: int


def request_state_ids(s: Session, request_id: int) -> RequestStateIds | None:
    """The one SELECT of a request's (stateid, laststateid); ``None`` when the request is gone."""
    row = s.execute(
        select(m.Request.stateid, m.Request.laststateid).where(m.Request.id == request_id)
    ).one_or_none()
    return None if row is None else RequestStateIds(int(row.stateid), int(row.laststateid))


def guarded_update(
    s: Session,
    request_id: int,
    *,
    expected: int,
    expected_last: int | None = None,
    stateid: int,
    laststateid: int | None = None,
) -> bool:
    """The one state UPDATE: ``SET stateid[, laststateid] WHERE id AND stateid = :expected
    [AND laststateid = :expected_last]``. True when this call changed the row."""
    cond = [m.Request.id == request_id, m.Request.stateid == expected]
    if expected_last is not None:
        cond.append(m.Request.laststateid == expected_last)
    values = {"stateid": stateid} if laststateid is None else {"stateid": stateid, "laststateid": laststateid}
    stmt = update(m.Request).where(*cond).values(**values).execution_options(synchronize_session=False)
    return dml(s, stmt).rowcount == 1


def claim(s: Session, ids: VclIds, request_id: int, from_state: str) -> ClaimOutcome:
    """``State.pm:initialize`` step 3: ``update_request_state(req, 'pending', from_state)``."""
    pending, from_id = ids.state(s, "pending"), ids.state(s, from_state)
    if guarded_update(s, request_id, expected=from_id, stateid=pending, laststateid=from_id):
        return ClaimOutcome.CLAIMED
    cur = request_state_ids(s, request_id)
    if cur == RequestStateIds(pending, from_id):
        return ClaimOutcome.RESUMED
    return ClaimOutcome.LOST


def unclaim(s: Session, ids: VclIds, request_id: int, from_state: str) -> bool:
    """Undo :func:`claim`: ``pending/<from>`` -> ``<from>``."""
    pending, from_id = ids.state(s, "pending"), ids.state(s, from_state)
    return guarded_update(s, request_id, expected=pending, expected_last=from_id, stateid=from_id)


def require_claimed(s: Session, ids: VclIds, r: Reservation) -> None:
    """The request must still be ``pending`` with laststate == the state it was claimed from."""
    cur = request_state_ids(s, r.request_id)
    if cur is None:
        raise StateConflictError(f"request {r.request_id} no longer exists")
    if cur != RequestStateIds(ids.state(s, "pending"), ids.state(s, r.request_state)):
        raise StateConflictError(
            f"request {r.request_id} is {ids.state_name(s, cur.stateid)}/"
            f"{ids.state_name(s, cur.laststateid)}, expected pending/{r.request_state}"
        )


def transition(s: Session, ids: VclIds, request_id: int, target: str, from_state: str) -> bool:
    """Guarded ``pending/<from_state>`` -> ``<target>/<from_state>``.

    True: this call moved the request. False: it already was in ``target`` (idempotent no-op).
    Raises :class:`StateConflictError` otherwise (the caller's transaction rolls back).
    """
    pending, from_id, target_id = ids.state(s, "pending"), ids.state(s, from_state), ids.state(s, target)
    if guarded_update(
        s, request_id, expected=pending, expected_last=from_id, stateid=target_id, laststateid=from_id
    ):
        return True
    cur = request_state_ids(s, request_id)
    if cur is None:
        raise StateConflictError(
            f"request {request_id} no longer exists (wanted pending/{from_state} -> {target})"
        )
    if cur.stateid == target_id:
        return False
    raise StateConflictError(
        f"request {request_id} is {ids.state_name(s, cur.stateid)}/"
        f"{ids.state_name(s, cur.laststateid)}, expected pending/{from_state} (wanted -> {target})"
    )


def fail_claimed(s: Session, ids: VclIds, request_id: int) -> str | None:
    """``pending/<claimed>`` -> ``failed`` (``maintenance`` for image/checkpoint, as image.pm does),
    whatever it was claimed from. Returns the new state, or ``None`` when the request is not pending."""
    pending = ids.state(s, "pending")
    cur = request_state_ids(s, request_id)
    if cur is None or cur.stateid != pending:
        return None
    from_state = ids.state_name(s, cur.laststateid)
    target = "maintenance" if from_state in ("image", "checkpoint") else "failed"
    if not guarded_update(
        s, request_id, expected=pending, expected_last=cur.laststateid, stateid=ids.state(s, target)
    ):
        return None
    return target


__all__ = [
    "VCL_STATES",
    "VCL_STATE_NAMES",
    "ClaimOutcome",
    "RequestStateIds",
    "VclIds",
    "claim",
    "dml",
    "fail_claimed",
    "guarded_update",
    "request_state_ids",
    "require_claimed",
    "transition",
    "unclaim",
]
