"""vcld's main loop against the database: ``get_management_node_requests`` + ``check_time``
(reference 3.1-3.2), the management node's check-in and ``delete_request``.

Functions take an open session; :class:`VclStore` owns the transaction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, case, delete, func, literal, literal_column, or_, select, update
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.engine import db_now, is_sqlite
from worker.db.errors import VclDataError
from worker.db.requests import VCL_STATE_NAMES, dml
from worker.db.reservation_row import VMHOST_COMPUTER, join_vmhost_and_module, short_name

#: States ``bin/vcld`` accepts at all (anything else is logged and skipped).
ALLOWED_REQUEST_STATES: tuple[str, ...] = (
    "inuse", "reserved", "deleted", "timeout", "reclaim", "reload", "new", "tomaintenance", "image",
    "imageprep", "makeproduction", "imageinuse", "complete", "failed", "pending", "maintenance",
    "tovmhostinuse", "rebootsoft", "reboothard", "reinstall", "servermodified", "checkpoint", "test",
)  # fmt: skip
#: States vcld polls but never processes.
SKIPPED_REQUEST_STATES = frozenset({"pending", "maintenance"})
#: ``check_time``: states whose start time decides (unanchored regex, as in utils.pm).
_START_TIME_STATES_RE = re.compile(r"(new|imageprep|reload|tovmhostinuse|test)")
#: ``check_time``: complete/failed requests with such a laststate are removed at once.
_REMOVE_LASTSTATE_RE = re.compile(r"image|deleted|makeproduction|reload|tomaintenance|tovmhostinuse")
#: inuse polling intervals in minutes (variable ``general_inuse_check`` 300 s / ``server_inuse_check``
#: 900 s as seeded by vcl.sql; the seeded values are used instead of reading ``variable`` per poll).
GENERAL_INUSE_CHECK_MIN = 5
SERVER_INUSE_CHECK_MIN = 15

DueAction = Literal["start", "preload", "remove", "end", "poll"]


@dataclass(frozen=True, slots=True)
class DueRequest:
    """One reservation vcld's main loop would act on (``get_management_node_requests`` +
    ``check_time``)."""

    request_id: int
    reservation_id: int
    state: str
    laststate: str
    action: DueAction
    computer_id: int
    vmhost_short_name: str | None
    start: datetime | None
    end: datetime | None
    # ``module.perlpackage`` of the computer's provisioning (None when the chain is broken): the
    # dispatcher claims only what its libvirt provisioning runs.
    perlpackage: str | None = None
    # ``end`` has passed (database clock): a ``reserved``/``inuse`` reservation is over (inuse.pm).
    past_end: bool = False


def _round_minutes(delta: timedelta) -> int:
    return math.floor(delta.total_seconds() / 60 + 0.5)


def check_time(
    state: str,
    laststate: str,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
    *,
    lastcheck: datetime | None = None,
    changelog_timestamp: datetime | None = None,
    server_request: bool = False,
) -> DueAction | None:
    """``utils.pm:check_time`` (reference 3.2); ``None`` is vcld's ``0`` (nothing to do now)."""
    if _START_TIME_STATES_RE.search(state):
        if start is None:
            return None
        diff = _round_minutes(start - now)
        if diff > 0:
            return "preload" if 25 <= diff <= 35 else None
        return "start"
    if state == "tomaintenance":
        if start is not None and _round_minutes(start - now) > 0:
            return None
        return "start"
    if state == "inuse":
        if end is not None and _round_minutes(end - now) <= 10:
            return "end"
        if (
            lastcheck is not None
            and changelog_timestamp is not None
            and changelog_timestamp < now
            and lastcheck < changelog_timestamp
        ):
            return "poll"
        interval = SERVER_INUSE_CHECK_MIN if server_request else GENERAL_INUSE_CHECK_MIN
        if lastcheck is None or _round_minutes(now - lastcheck) >= interval:
            return "poll"
        return None
    if state in ("complete", "failed"):
        if _REMOVE_LASTSTATE_RE.search(laststate):
            return "remove"
        if end is not None and end <= now:
            return "remove"
        return None
    return "start"


def find_due_requests(s: Session, management_node_id: int, now: datetime | None) -> list[DueRequest]:
    """``get_management_node_requests`` + ``check_time`` in ONE query (reference 3.1-3.2).

    One row per reservation of this management node (ascending reservation id), skipping
    states vcld does not know and ``pending``/``maintenance``. Actions: ``start``, ``preload``
    (not returned when ``request.preload`` is already 1), ``remove``, and for ``inuse``
    requests ``end``/``poll``. ``now`` defaults to the database's ``NOW()``.
    The SQL pre-filters on the time windows so that rows with nothing to do are not fetched.
    """
    rows = s.execute(_due_query(s, management_node_id, now)).all()
    out: list[DueRequest] = []
    for row in rows:
        mp = row._mapping
        ref_now: datetime = now if now is not None else mp["dbnow"]
        action = check_time(
            mp["state"],
            mp["laststate"],
            mp["start"],
            mp["end"],
            ref_now,
            lastcheck=mp["lastcheck"],
            changelog_timestamp=mp["changelog_ts"],
            server_request=mp["serverrequest_id"] is not None,
        )
        if action is None or (action == "preload" and mp["preload"]):
            continue
        host = mp["vmhost_hostname"]
        out.append(
            DueRequest(
                request_id=mp["request_id"],
                reservation_id=mp["reservation_id"],
                state=mp["state"],
                laststate=mp["laststate"],
                action=action,
                computer_id=mp["computer_id"],
                vmhost_short_name=short_name(host) if host else None,
                start=mp["start"],
                end=mp["end"],
                perlpackage=mp["perlpackage"],
                past_end=mp["end"] is not None and mp["end"] <= ref_now,
            )
        )
    return out


def _names_matching(pattern: re.Pattern[str], names: Iterable[str]) -> list[str]:
    return [n for n in names if pattern.search(n)]


def _due_query(s: Session, management_node_id: int, now: datetime | None) -> Any:
    """The single SELECT behind :func:`find_due_requests`.

    Driven by the ``reservation.managementnodeid`` index; joins request/state by primary key.
    The WHERE clause is a superset of check_time's non-zero results so that idle rows (future
    reservations, finished requests that are not removable yet) never leave the database.
    """
    st = aliased(m.State, name="st")
    lst = aliased(m.State, name="lst")
    rq = m.Request
    rs = m.Reservation

    base: ColumnElement[Any]
    if now is None and not is_sqlite(s):
        base = func.now()

        def plus(minutes: int) -> ColumnElement[Any]:
            return func.timestampadd(literal_column("MINUTE"), minutes, func.now())

    else:
        ref = now if now is not None else datetime.now().replace(microsecond=0)
        base = literal(ref, m.VclDateTime())

        def plus(minutes: int) -> ColumnElement[Any]:
            return literal(ref + timedelta(minutes=minutes), m.VclDateTime())

    wanted = [n for n in ALLOWED_REQUEST_STATES if n not in SKIPPED_REQUEST_STATES]
    start_states = _names_matching(_START_TIME_STATES_RE, wanted)
    remove_last = _names_matching(_REMOVE_LASTSTATE_RE, VCL_STATE_NAMES)
    other_states = [
        n for n in wanted if n not in start_states and n not in ("tomaintenance", "complete", "failed")
    ]
    time_filter = or_(
        and_(st.name.in_(start_states), rq.start <= plus(36)),
        and_(st.name == "tomaintenance", rq.start <= plus(1)),
        and_(st.name.in_(["complete", "failed"]), or_(lst.name.in_(remove_last), rq.end <= plus(1))),
        st.name.in_(other_states),
    )
    changelog_ts = (
        select(func.max(m.Changelog.timestamp))
        .where(m.Changelog.logid == rq.logid, m.Changelog.remoteIP.is_not(None))
        .correlate(rq)
        .scalar_subquery()
    )
    query = (
        select(
            rq.id.label("request_id"),
            rs.id.label("reservation_id"),
            st.name.label("state"),
            lst.name.label("laststate"),
            rq.start.label("start"),
            rq.end.label("end"),
            rq.preload.label("preload"),
            rs.lastcheck.label("lastcheck"),
            rs.computerid.label("computer_id"),
            VMHOST_COMPUTER.hostname.label("vmhost_hostname"),
            m.Module.perlpackage.label("perlpackage"),
            m.ServerRequest.id.label("serverrequest_id"),
            # The changelog poll only matters for inuse; skip the subquery for other states.
            _inuse_only(st.name, changelog_ts).label("changelog_ts"),
            base.label("dbnow"),
        )
        .select_from(rs)
        .join(rq, rq.id == rs.requestid)
        .join(st, st.id == rq.stateid)
        .join(lst, lst.id == rq.laststateid)
    )
    return (
        join_vmhost_and_module(query, rs.computerid)
        .outerjoin(m.ServerRequest, m.ServerRequest.requestid == rq.id)
        .where(rs.managementnodeid == management_node_id, st.name.in_(wanted), time_filter)
        .order_by(rs.id)
    )


def _inuse_only(state_col: Any, expr: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((state_col == "inuse", expr), else_=literal(None, m.VclDateTime()))


def update_lastcheckin(s: Session, management_node_id: int) -> int:
    """``utils.pm:update_lastcheckin``; returns ``managementnode.checkininterval`` (seconds)."""
    now = db_now(s)
    res = dml(
        s,
        update(m.ManagementNode)
        .where(m.ManagementNode.id == management_node_id)
        .values(lastcheckin=now)
        .execution_options(synchronize_session=False),
    )
    interval = s.execute(
        select(m.ManagementNode.checkininterval).where(m.ManagementNode.id == management_node_id)
    ).scalar_one_or_none()
    if res.rowcount == 0 and interval is None:
        raise VclDataError(f"managementnode {management_node_id} not found")
    return int(interval) if interval is not None else 12


def checkin_interval(s: Session, management_node_id: int) -> int:
    """``managementnode.checkininterval`` in seconds (vcld's default 12 when missing)."""
    interval = s.execute(
        select(m.ManagementNode.checkininterval).where(m.ManagementNode.id == management_node_id)
    ).scalar_one_or_none()
    return int(interval) if interval else 12


def delete_request(s: Session, request_id: int) -> None:
    """``utils.pm:delete_request``: computerloadlog rows, then reservations, then the request."""
    res_ids = select(m.Reservation.id).where(m.Reservation.requestid == request_id).scalar_subquery()
    s.execute(
        delete(m.ComputerLoadLog)
        .where(m.ComputerLoadLog.reservationid.in_(res_ids))
        .execution_options(synchronize_session=False)
    )
    s.execute(
        delete(m.Reservation)
        .where(m.Reservation.requestid == request_id)
        .execution_options(synchronize_session=False)
    )
    s.execute(
        delete(m.Request).where(m.Request.id == request_id).execution_options(synchronize_session=False)
    )


__all__ = [
    "ALLOWED_REQUEST_STATES",
    "DueAction",
    "DueRequest",
    "check_time",
    "checkin_interval",
    "delete_request",
    "find_due_requests",
    "update_lastcheckin",
]
