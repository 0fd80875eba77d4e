"""All reads and writes the worker makes to the VCL database, modelled on vcld (``utils.pm``,
``State.pm``, ``new.pm``, ``image.pm``; see shared/reference/vcl-behaviour.md section 3).

Every public method of :class:`VclStore` is one explicit transaction (``with sf.begin()``): it
either commits completely or, on any exception, rolls back completely.

Request state changes are guarded like ``utils.pm:update_request_state``: a worker only moves a
request out of ``pending`` when ``laststateid`` is still the state it claimed the request from.
When the guard matches no row and the request is already in the target state the method is a
no-op (a redelivered Celery task finishing twice); otherwise :class:`StateConflictError`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from worker.db import models as m
from worker.db.engine import db_now, is_sqlite
from worker.db.errors import (
    ImageRevisionError,
    NotLibvirtProvisionedError,
    NoVMHostError,
    NoVMProfileError,
    ReservationNotFoundError,
    StateConflictError,
    VclDataError,
)
from worker.reservation import Reservation, VMProfile

LIBVIRT_PERL_PACKAGE = "VCL::Module::Provisioning::libvirt"

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
#: Every state name of vcl.sql (used to turn the regexes above into SQL ``IN`` lists).
VCL_STATE_NAMES: tuple[str, ...] = (
    "deleted", "available", "reserved", "classreserved", "failed", "reloading", "imageinuse", "inuse",
    "cleaning", "maintenance", "timeout", "complete", "new", "pending", "imageprep", "image",
    "makeproduction", "tomaintenance", "reload", "vmhostinuse", "tovmhostinuse", "tohpc", "hpc",
    "checkpoint", "serverinuse", "rebootsoft", "reinstall", "reboothard", "servermodified",
)  # fmt: skip
#: inuse polling intervals in minutes (variable ``general_inuse_check`` 300 s / ``server_inuse_check``
#: 900 s as seeded by vcl.sql; the seeded values are used instead of reading ``variable`` per poll).
GENERAL_INUSE_CHECK_MIN = 5
SERVER_INUSE_CHECK_MIN = 15

#: Load states finished by :meth:`VclStore.finish_load`: claimed state -> (request, computer) result.
_LOAD_RESULTS: dict[str, tuple[str, str]] = {
    "new": ("reserved", "reserved"),
    "reinstall": ("reserved", "reserved"),
    "reload": ("complete", "available"),
    "imageprep": ("complete", "available"),
    "tovmhostinuse": ("complete", "vmhostinuse"),
}

DueAction = Literal["start", "preload", "remove", "end", "poll"]


class ClaimOutcome(enum.Enum):
    """Result of :meth:`VclStore.claim_request`."""

    CLAIMED = "claimed"  # this call moved the request to pending
    RESUMED = "resumed"  # already pending with laststate == from_state (redelivered task)
    LOST = "lost"  # someone else owns it / it changed state / it is gone


@dataclass(frozen=True, slots=True)
class LoadLogEntry:
    id: int
    loadstatename: str
    timestamp: datetime | None
    additionalinfo: str | None


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


def short_name(hostname: str) -> str:
    """``hostname`` up to the first ``.`` (DataStructure SHORTNAME)."""
    return hostname.split(".", 1)[0]


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


class VclStore:
    """The VCL database as the worker sees it. Thread-safe (no per-call state besides caches)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sf = session_factory
        self._state_ids_cache: dict[str, int] | None = None
        self._loadstate_ids_cache: dict[str, int] | None = None

    # ------------------------------------------------------------------ lookups (cached)

    def _state_ids(self, s: Session) -> dict[str, int]:
        """state.name -> id (static seed data; read once)."""
        if self._state_ids_cache is None:
            rows = s.execute(select(m.State.name, m.State.id)).all()
            self._state_ids_cache = {name: sid for name, sid in rows}
        return self._state_ids_cache

    def _state_id(self, s: Session, name: str) -> int:
        ids = self._state_ids(s)
        try:
            return ids[name]
        except KeyError:
            raise VclDataError(f"state {name!r} does not exist in table state") from None

    def _state_name(self, s: Session, state_id: int) -> str:
        for name, sid in self._state_ids(s).items():
            if sid == state_id:
                return name
        return f"<unknown state id {state_id}>"

    def _loadstate_id(self, s: Session, name: str) -> int:
        if self._loadstate_ids_cache is None or name not in self._loadstate_ids_cache:
            rows = s.execute(select(m.ComputerLoadState.loadstatename, m.ComputerLoadState.id)).all()
            self._loadstate_ids_cache = {n: i for n, i in rows}
        try:
            return self._loadstate_ids_cache[name]
        except KeyError:
            raise VclDataError(f"computerloadstate {name!r} does not exist") from None

    # ------------------------------------------------------------------ load_reservation

    def load_reservation(self, reservation_id: int) -> Reservation:
        """Everything the provisioning core needs about one reservation, in ONE SELECT.

        ``request_state`` is ``state.name`` of ``request.stateid``, except for a ``pending`` request
        where it is the laststate (the state the request was claimed from, as vcld's polled value).
        For a pending request the pre-claim laststate is gone from the database, so
        ``request_laststate`` then equals ``request_state``.
        """
        with self._sf.begin() as s:
            row = s.execute(_reservation_query(reservation_id)).one_or_none()
        if row is None:
            raise ReservationNotFoundError(f"reservation {reservation_id} not found")
        return _reservation_from_row(reservation_id, row._mapping)

    # ------------------------------------------------------------------ claim / states

    def claim_request(self, request_id: int, from_state: str) -> ClaimOutcome:
        """``State.pm:initialize`` step 3: ``update_request_state(req, 'pending', from_state)``."""
        with self._sf.begin() as s:
            pending = self._state_id(s, "pending")
            from_id = self._state_id(s, from_state)
            res = _dml(
                s,
                update(m.Request)
                .where(m.Request.id == request_id, m.Request.stateid == from_id)
                .values(stateid=pending, laststateid=from_id)
                .execution_options(synchronize_session=False),
            )
            if res.rowcount == 1:
                return ClaimOutcome.CLAIMED
            cur = s.execute(
                select(m.Request.stateid, m.Request.laststateid).where(m.Request.id == request_id)
            ).one_or_none()
            if cur is not None and cur.stateid == pending and cur.laststateid == from_id:
                return ClaimOutcome.RESUMED
            return ClaimOutcome.LOST

    def request_states(self, request_id: int) -> tuple[str, str] | None:
        """(state name, laststate name) of the request, or ``None`` if it does not exist."""
        st = aliased(m.State)
        lst = aliased(m.State)
        with self._sf.begin() as s:
            row = s.execute(
                select(st.name, lst.name)
                .select_from(m.Request)
                .join(st, st.id == m.Request.stateid)
                .join(lst, lst.id == m.Request.laststateid)
                .where(m.Request.id == request_id)
            ).one_or_none()
        return None if row is None else (row[0], row[1])

    def computer_state(self, computer_id: int) -> str:
        with self._sf.begin() as s:
            name = s.execute(
                select(m.State.name)
                .join(m.Computer, m.Computer.stateid == m.State.id)
                .where(m.Computer.id == computer_id)
            ).scalar_one_or_none()
        if name is None:
            raise VclDataError(f"computer {computer_id} not found")
        return name

    # ------------------------------------------------------------------ computerloadlog

    def _insert_loadlog(
        self, s: Session, reservation_id: int, computer_id: int, name: str, info: str, now: datetime
    ) -> None:
        s.execute(
            insert(m.ComputerLoadLog).values(
                reservationid=reservation_id,
                computerid=computer_id,
                loadstateid=self._loadstate_id(s, name),
                timestamp=now,
                additionalinfo=info,
            )
        )

    def insert_loadlog(
        self, reservation_id: int, computer_id: int, loadstatename: str, info: str = ""
    ) -> None:
        """``utils.pm:insertloadlog``."""
        with self._sf.begin() as s:
            self._insert_loadlog(s, reservation_id, computer_id, loadstatename, info, db_now(s))

    def loadlog(self, reservation_id: int) -> list[LoadLogEntry]:
        with self._sf.begin() as s:
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

    # ------------------------------------------------------------------ shared write helpers

    def _set_computer_state(self, s: Session, computer_id: int, state: str, **extra: Any) -> None:
        s.execute(
            update(m.Computer)
            .where(m.Computer.id == computer_id)
            .values(stateid=self._state_id(s, state), **extra)
            .execution_options(synchronize_session=False)
        )

    def _require_claimed(self, s: Session, r: Reservation) -> None:
        """The request must still be ``pending`` with laststate == the state it was claimed from."""
        cur = s.execute(
            select(m.Request.stateid, m.Request.laststateid).where(m.Request.id == r.request_id)
        ).one_or_none()
        if cur is None:
            raise StateConflictError(f"request {r.request_id} no longer exists")
        if cur.stateid != self._state_id(s, "pending") or cur.laststateid != self._state_id(
            s, r.request_state
        ):
            raise StateConflictError(
                f"request {r.request_id} is {self._state_name(s, cur.stateid)}/"
                f"{self._state_name(s, cur.laststateid)}, expected pending/{r.request_state}"
            )

    def _transition(self, s: Session, request_id: int, target: str, from_state: str) -> bool:
        """Guarded ``pending/<from_state>`` -> ``<target>/<from_state>``.

        True: this call moved the request. False: it already was in ``target`` (idempotent no-op).
        Raises :class:`StateConflictError` otherwise (the caller's transaction rolls back).
        """
        pending = self._state_id(s, "pending")
        from_id = self._state_id(s, from_state)
        target_id = self._state_id(s, target)
        res = _dml(
            s,
            update(m.Request)
            .where(m.Request.id == request_id, m.Request.stateid == pending, m.Request.laststateid == from_id)
            .values(stateid=target_id, laststateid=from_id)
            .execution_options(synchronize_session=False),
        )
        if res.rowcount == 1:
            return True
        cur = s.execute(
            select(m.Request.stateid, m.Request.laststateid).where(m.Request.id == request_id)
        ).one_or_none()
        if cur is None:
            raise StateConflictError(
                f"request {request_id} no longer exists (wanted pending/{from_state} -> {target})"
            )
        if cur.stateid == target_id:
            return False
        raise StateConflictError(
            f"request {request_id} is {self._state_name(s, cur.stateid)}/"
            f"{self._state_name(s, cur.laststateid)}, expected pending/{from_state} (wanted -> {target})"
        )

    def _request_logid(self, s: Session, request_id: int) -> int | None:
        return s.execute(select(m.Request.logid).where(m.Request.id == request_id)).scalar_one_or_none()

    def _update_log_ending(self, s: Session, request_id: int, ending: str, now: datetime) -> None:
        """``utils.pm:update_log_ending`` (only when ``request.logid`` is set)."""
        logid = self._request_logid(s, request_id)
        if logid is not None:
            s.execute(
                update(m.Log)
                .where(m.Log.id == logid)
                .values(ending=ending, finalend=now)
                .execution_options(synchronize_session=False)
            )

    def _state_exit_loadlog(self, s: Session, r: Reservation, old_state: str, now: datetime) -> None:
        """``State.pm:state_exit`` steps 5-6 for the parent: delete ``begin`` rows (old state
        new/reserved) or all rows of all the request's reservations, then insert ``exited``."""
        res_ids = select(m.Reservation.id).where(m.Reservation.requestid == r.request_id)
        cond: ColumnElement[bool] = m.ComputerLoadLog.reservationid.in_(res_ids.scalar_subquery())
        if old_state in ("new", "reserved"):
            cond = and_(cond, m.ComputerLoadLog.loadstateid == self._loadstate_id(s, "begin"))
        s.execute(delete(m.ComputerLoadLog).where(cond).execution_options(synchronize_session=False))
        self._insert_loadlog(s, r.reservation_id, r.computer_id, "exited", "", now)

    # ------------------------------------------------------------------ load (new.pm)

    def start_load(self, r: Reservation) -> None:
        """``new.pm:reload_image`` up to ``provisioner->load()``: statuscheck, loadimageblade,
        computer -> reloading (+ info), doesimageexists, info (calling load).

        The request must still be claimed (pending/<r.request_state>), else StateConflictError.
        """
        with self._sf.begin() as s:
            self._require_claimed(s, r)
            now = db_now(s)
            rid, cid = r.reservation_id, r.computer_id
            self._insert_loadlog(s, rid, cid, "statuscheck", "checking status of node", now)
            self._insert_loadlog(
                s,
                rid,
                cid,
                "loadimageblade",
                f"{r.computer_short_name} must be reloaded with {r.imagerevision_imagename}",
                now,
            )
            self._set_computer_state(s, cid, "reloading")
            self._insert_loadlog(s, rid, cid, "info", "computer state set to reloading", now)
            self._insert_loadlog(
                s, rid, cid, "doesimageexists", f"image {r.imagerevision_imagename} exists", now
            )
            self._insert_loadlog(s, rid, cid, "info", "calling libvirt load()", now)

    def finish_load(self, r: Reservation) -> None:
        """Success of ``new.pm`` (reference 3.4 step 8-9, 3.9).

        ``new``/``reinstall`` -> request ``reserved``; the computer goes to ``reserved`` at once
        because this worker has no reserved.pm (whose first step sets it). ``reload``/``imageprep``
        -> request ``complete``, computer ``available``; ``tovmhostinuse`` -> complete/vmhostinuse.
        Loadlog rows are then cleaned up as ``state_exit`` does (only ``begin`` rows for ``new``,
        all rows otherwise — vcld treats ``reinstall`` like reload here) and ``exited`` inserted.
        """
        result = _LOAD_RESULTS.get(r.request_state)
        if result is None:
            raise VclDataError(
                f"finish_load: request {r.request_id} was claimed from {r.request_state!r}, not a load state"
            )
        req_state, comp_state = result
        with self._sf.begin() as s:
            if not self._transition(s, r.request_id, req_state, r.request_state):
                return
            now = db_now(s)
            rid, cid = r.reservation_id, r.computer_id
            self._insert_loadlog(
                s, rid, cid, "loadimagecomplete", f"image {r.imagerevision_imagename} loaded", now
            )
            s.execute(
                update(m.Computer)
                .where(m.Computer.id == cid)
                .values(
                    currentimageid=r.image_id,
                    imagerevisionid=r.imagerevision_id,
                    stateid=self._state_id(s, comp_state),
                )
                .execution_options(synchronize_session=False)
            )
            self._insert_loadlog(s, rid, cid, "nodeready", f"{r.computer_short_name} is ready", now)
            self._state_exit_loadlog(s, r, r.request_state, now)

    def fail_load(self, r: Reservation, message: str) -> None:
        """``reservation_failed`` for a load state: loadimagefailed + failed rows, request
        ``failed/<state>``, computer ``failed``, log ending ``failed`` for new; then state_exit's
        loadlog cleanup (begin rows only for new, so the failure rows stay visible to the web; all
        rows for reload etc., exactly as vcld) and ``exited``."""
        if r.request_state not in _LOAD_RESULTS:
            raise VclDataError(
                f"fail_load: request {r.request_id} was claimed from {r.request_state!r}, not a load state"
            )
        with self._sf.begin() as s:
            if not self._transition(s, r.request_id, "failed", r.request_state):
                return
            now = db_now(s)
            rid, cid = r.reservation_id, r.computer_id
            self._insert_loadlog(s, rid, cid, "loadimagefailed", message, now)
            self._insert_loadlog(s, rid, cid, "failed", message, now)
            self._set_computer_state(s, cid, "failed")
            if r.request_state in ("new", "reserved"):
                self._update_log_ending(s, r.request_id, "failed", now)
            self._state_exit_loadlog(s, r, r.request_state, now)

    # ------------------------------------------------------------------ capture (image.pm)

    def finish_capture(self, r: Reservation, new_image_name: str, size_mb: int) -> int:
        """``image.pm`` success (reference 3.6 steps 8-11). Returns the new reload request id
        (0 when nothing was inserted: already finished, or the computer already in a reload state).

        ``imagerevision.imagename`` and ``image.name`` both become ``new_image_name``: unlike vcld
        (which writes the pre-capture name back into ``image.name``, section 3.6 step 9) the image
        name here always matches the captured files' name.
        """
        if r.request_state != "image":
            raise VclDataError(
                f"finish_capture: request {r.request_id} was claimed from {r.request_state!r}, not 'image'"
            )
        if not new_image_name or len(new_image_name) > 70:
            raise VclDataError(f"finish_capture: invalid new image name {new_image_name!r} (1-70 chars)")
        with self._sf.begin() as s:
            if not self._transition(s, r.request_id, "complete", "image"):
                return self._existing_reload_request(s, r)
            now = db_now(s)
            s.execute(
                update(m.ImageRevision)
                .where(m.ImageRevision.id == r.imagerevision_id)
                .values(imagename=new_image_name, deleted=0, datecreated=now)
                .execution_options(synchronize_session=False)
            )
            try:
                s.execute(
                    update(m.Image)
                    .where(m.Image.id == r.image_id)
                    .values(
                        name=new_image_name,
                        deleted=0,
                        size=max(0, min(int(size_mb), 65535)),
                        lastupdate=now,
                    )
                    .execution_options(synchronize_session=False)
                )
            except IntegrityError as exc:
                raise VclDataError(
                    f"finish_capture: image {r.image_id} cannot be renamed to {new_image_name!r}: {exc.orig}"
                ) from exc
            new_request_id = self._insert_reload_request(s, r, now)
            self._update_log_ending(s, r.request_id, "EOR", now)
            self._state_exit_loadlog(s, r, "image", now)
            return new_request_id

    def _existing_reload_request(self, s: Session, r: Reservation) -> int:
        found = s.execute(
            select(m.Request.id)
            .join(m.Reservation, m.Reservation.requestid == m.Request.id)
            .where(
                m.Reservation.computerid == r.computer_id,
                m.Reservation.imagerevisionid == r.imagerevision_id,
                m.Request.id != r.request_id,
                m.Request.stateid.in_([self._state_id(s, "reload"), self._state_id(s, "pending")]),
            )
            .order_by(m.Request.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        return int(found) if found is not None else 0

    def _insert_reload_request(self, s: Session, r: Reservation, now: datetime) -> int:
        """``utils.pm:insert_reload_request``: computer -> reload, a reload request for the
        reservation's (new) revision on the same computer, owned by ``vclreload``."""
        comp = s.execute(
            select(m.State.name, m.Computer.type)
            .join(m.State, m.State.id == m.Computer.stateid)
            .where(m.Computer.id == r.computer_id)
        ).one_or_none()
        if comp is None:
            raise VclDataError(f"computer {r.computer_id} not found")
        if "reload" in comp[0]:
            return 0
        self._set_computer_state(s, r.computer_id, "reload")
        self._insert_loadlog(
            s,
            r.reservation_id,
            r.computer_id,
            "loadimagevmware" if comp[1] == "virtualmachine" else "info",
            f"inserted reload request for {r.imagerevision_imagename}",
            now,
        )
        user_id = s.execute(
            select(m.User.id).where(m.User.unityid == "vclreload").order_by(m.User.id).limit(1)
        ).scalar_one_or_none()
        if user_id is None:
            raise VclDataError("user 'vclreload' does not exist")
        new_req = _dml(
            s,
            insert(m.Request).values(
                stateid=self._state_id(s, "reload"),
                laststateid=self._state_id(s, r.request_laststate),
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
                computerid=r.computer_id,
                imageid=r.image_id,
                imagerevisionid=r.imagerevision_id,
                managementnodeid=r.management_node_id,
            )
        )
        return request_id

    def fail_capture(self, r: Reservation, message: str) -> None:
        """``image.pm:reservation_failed``: failed row, request ``maintenance/image``, computer
        ``maintenance``; state_exit then deletes the request's loadlog rows (old state image) and
        inserts ``exited``. vcld never picks a maintenance request up again: an admin must."""
        if r.request_state != "image":
            raise VclDataError(
                f"fail_capture: request {r.request_id} was claimed from {r.request_state!r}, not 'image'"
            )
        with self._sf.begin() as s:
            if not self._transition(s, r.request_id, "maintenance", "image"):
                return
            now = db_now(s)
            self._insert_loadlog(s, r.reservation_id, r.computer_id, "failed", message, now)
            self._set_computer_state(s, r.computer_id, "maintenance")
            self._state_exit_loadlog(s, r, "image", now)

    # ------------------------------------------------------------------ tomaintenance (new.pm)

    def finish_maintenance(self, r: Reservation) -> None:
        """``new.pm`` tomaintenance + ``libvirt.pm:post_maintenance_action``: computer
        ``maintenance`` with current image ``noimage`` and ``vmhostid`` NULL; request
        ``complete/tomaintenance``; loadlog rows of the request deleted, ``exited`` inserted."""
        if r.request_state != "tomaintenance":
            raise VclDataError(
                f"finish_maintenance: request {r.request_id} was claimed from {r.request_state!r}, "
                "not 'tomaintenance'"
            )
        with self._sf.begin() as s:
            if not self._transition(s, r.request_id, "complete", "tomaintenance"):
                return
            now = db_now(s)
            noimage = s.execute(
                select(m.ImageRevision.imageid, m.ImageRevision.id)
                .where(m.ImageRevision.imagename == "noimage")
                .order_by(m.ImageRevision.production.desc(), m.ImageRevision.id)
                .limit(1)
            ).one_or_none()
            if noimage is None:
                raise VclDataError("imagerevision 'noimage' does not exist")
            self._set_computer_state(
                s,
                r.computer_id,
                "maintenance",
                currentimageid=noimage[0],
                imagerevisionid=noimage[1],
                vmhostid=None,
            )
            self._state_exit_loadlog(s, r, "tomaintenance", now)

    # ------------------------------------------------------------------ vcld main loop

    def find_due_requests(self, management_node_id: int, now: datetime | None = None) -> list[DueRequest]:
        """``get_management_node_requests`` + ``check_time`` in ONE query (reference 3.1-3.2).

        One row per reservation of this management node (ascending reservation id), skipping
        states vcld does not know and ``pending``/``maintenance``. Actions: ``start``, ``preload``
        (not returned when ``request.preload`` is already 1), ``remove``, and for ``inuse``
        requests ``end``/``poll``. ``now`` defaults to the database's ``NOW()``.
        The SQL pre-filters on the time windows so that rows with nothing to do are not fetched.
        """
        with self._sf.begin() as s:
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
                )
            )
        return out

    def update_lastcheckin(self, management_node_id: int) -> int:
        """``utils.pm:update_lastcheckin``; returns ``managementnode.checkininterval`` (seconds)."""
        with self._sf.begin() as s:
            now = db_now(s)
            res = _dml(
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

    def delete_request(self, request_id: int) -> None:
        """``utils.pm:delete_request``: computerloadlog rows, then reservations, then the request."""
        with self._sf.begin() as s:
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
                delete(m.Request)
                .where(m.Request.id == request_id)
                .execution_options(synchronize_session=False)
            )

    # ------------------------------------------------------------------ pipeline helpers

    def reservation_request(self, reservation_id: int) -> tuple[int, str, str] | None:
        """(request id, state name, laststate name) of a reservation's request, or ``None``."""
        st = aliased(m.State)
        lst = aliased(m.State)
        with self._sf.begin() as s:
            row = s.execute(
                select(m.Request.id, st.name, lst.name)
                .select_from(m.Reservation)
                .join(m.Request, m.Request.id == m.Reservation.requestid)
                .join(st, st.id == m.Request.stateid)
                .join(lst, lst.id == m.Request.laststateid)
                .where(m.Reservation.id == reservation_id)
            ).one_or_none()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def vmhost_short_name(self, reservation_id: int) -> str | None:
        """Short hostname of the VM host serving the reservation's computer (task routing)."""
        host = aliased(m.Computer)
        with self._sf.begin() as s:
            hostname = s.execute(
                select(host.hostname)
                .select_from(m.Reservation)
                .join(m.Computer, m.Computer.id == m.Reservation.computerid)
                .join(m.VMHost, m.VMHost.id == m.Computer.vmhostid)
                .join(host, host.id == m.VMHost.computerid)
                .where(m.Reservation.id == reservation_id)
            ).scalar_one_or_none()
        return None if hostname is None else short_name(hostname)

    def checkin_interval(self, management_node_id: int) -> int:
        """``managementnode.checkininterval`` in seconds (vcld's default 12 when missing)."""
        with self._sf.begin() as s:
            interval = s.execute(
                select(m.ManagementNode.checkininterval).where(m.ManagementNode.id == management_node_id)
            ).scalar_one_or_none()
        return int(interval) if interval else 12

    def unclaim_request(self, request_id: int, from_state: str) -> bool:
        """Undo :meth:`claim_request` (the task could not be enqueued): ``pending/<from>`` → ``<from>``."""
        with self._sf.begin() as s:
            pending = self._state_id(s, "pending")
            from_id = self._state_id(s, from_state)
            res = _dml(
                s,
                update(m.Request)
                .where(
                    m.Request.id == request_id, m.Request.stateid == pending, m.Request.laststateid == from_id
                )
                .values(stateid=from_id)
                .execution_options(synchronize_session=False),
            )
            return res.rowcount == 1

    def fail_request(self, request_id: int, reservation_id: int, message: str) -> None:
        """``reservation_failed`` when the reservation's data cannot even be loaded.

        The request goes ``failed/<claimed state>`` (only from ``pending``, guarded) and a ``failed``
        computerloadlog row records the message; the computer, if the row exists, goes ``failed``
        unless it is in maintenance. Image requests go to ``maintenance`` as image.pm does.
        """
        with self._sf.begin() as s:
            pending = self._state_id(s, "pending")
            cur = s.execute(
                select(m.Request.stateid, m.Request.laststateid).where(m.Request.id == request_id)
            ).one_or_none()
            if cur is None or cur.stateid != pending:
                return
            from_state = self._state_name(s, cur.laststateid)
            target = "maintenance" if from_state in ("image", "checkpoint") else "failed"
            res = _dml(
                s,
                update(m.Request)
                .where(m.Request.id == request_id, m.Request.stateid == pending)
                .values(stateid=self._state_id(s, target))
                .execution_options(synchronize_session=False),
            )
            if res.rowcount != 1:
                return
            computer_id = s.execute(
                select(m.Reservation.computerid).where(m.Reservation.id == reservation_id)
            ).scalar_one_or_none()
            if computer_id is None:
                return
            comp = s.execute(
                select(m.Computer.id, m.Computer.stateid).where(m.Computer.id == computer_id)
            ).one_or_none()
            if comp is None:
                return
            now = db_now(s)
            self._insert_loadlog(s, reservation_id, computer_id, "failed", message[:4000], now)
            if comp.stateid != self._state_id(s, "maintenance"):
                self._set_computer_state(
                    s, computer_id, "maintenance" if target == "maintenance" else "failed"
                )


# ---------------------------------------------------------------------- query builders


def _dml(s: Session, stmt: Any) -> CursorResult[Any]:
    """Execute an INSERT/UPDATE/DELETE and return the cursor result (rowcount, inserted pk)."""
    return cast(CursorResult[Any], s.execute(stmt))


def _reservation_query(reservation_id: int) -> Any:
    rs = m.Reservation
    rq = m.Request
    st = aliased(m.State, name="st")
    lst = aliased(m.State, name="lst")
    c = aliased(m.Computer, name="c")
    prov = m.Provisioning
    mod = m.Module
    img = m.Image
    os_ = m.OS
    rev = m.ImageRevision
    vh = m.VMHost
    hc = aliased(m.Computer, name="hc")
    vp = m.VMProfileRow
    dsit = aliased(m.ImageType, name="dsit")
    rpit = aliased(m.ImageType, name="rpit")
    mn = m.ManagementNode
    return (
        select(
            rs.id.label("reservation_id"),
            rs.requestid.label("request_id"),
            rs.imageid.label("res_imageid"),
            rs.imagerevisionid.label("res_imagerevisionid"),
            rs.computerid.label("res_computerid"),
            rs.managementnodeid.label("res_mnid"),
            rq.id.label("rq_id"),
            st.name.label("state"),
            lst.name.label("laststate"),
            c.id.label("computer_id"),
            c.hostname.label("computer_hostname"),
            c.deleted.label("computer_deleted"),
            c.eth0macaddress.label("eth0"),
            c.eth1macaddress.label("eth1"),
            c.vmhostid.label("vmhostid"),
            c.provisioningid.label("provisioningid"),
            prov.name.label("provisioning_name"),
            mod.perlpackage.label("perlpackage"),
            img.id.label("image_id"),
            img.name.label("image_name"),
            img.prettyname.label("image_prettyname"),
            img.project.label("image_project"),
            img.minram.label("image_minram"),
            img.minprocnumber.label("image_minprocnumber"),
            img.OSid.label("image_osid"),
            os_.id.label("os_id"),
            os_.name.label("os_name"),
            os_.type.label("os_type"),
            os_.minram.label("os_minram"),
            rev.id.label("rev_id"),
            rev.imageid.label("rev_imageid"),
            rev.revision.label("rev_revision"),
            rev.imagename.label("rev_imagename"),
            rev.deleted.label("rev_deleted"),
            vh.id.label("vmhost_id"),
            vh.computerid.label("vmhost_computerid"),
            vh.vmprofileid.label("vmhost_vmprofileid"),
            hc.id.label("host_id"),
            hc.hostname.label("host_hostname"),
            vp.id.label("vp_id"),
            vp.profilename.label("vp_profilename"),
            vp.datastorepath.label("vp_datastorepath"),
            vp.vmpath.label("vp_vmpath"),
            vp.repositorypath.label("vp_repositorypath"),
            vp.virtualswitch0.label("vp_vs0"),
            vp.virtualswitch1.label("vp_vs1"),
            vp.eth0generated.label("vp_eth0gen"),
            vp.eth1generated.label("vp_eth1gen"),
            vp.datastoreimagetypeid.label("vp_dsitid"),
            vp.repositoryimagetypeid.label("vp_rpitid"),
            dsit.name.label("ds_imagetype"),
            rpit.name.label("rp_imagetype"),
            mn.id.label("mn_id"),
            mn.hostname.label("mn_hostname"),
        )
        .select_from(rs)
        .outerjoin(rq, rq.id == rs.requestid)
        .outerjoin(st, st.id == rq.stateid)
        .outerjoin(lst, lst.id == rq.laststateid)
        .outerjoin(c, c.id == rs.computerid)
        .outerjoin(prov, prov.id == c.provisioningid)
        .outerjoin(mod, mod.id == prov.moduleid)
        .outerjoin(img, img.id == rs.imageid)
        .outerjoin(os_, os_.id == img.OSid)
        .outerjoin(rev, rev.id == rs.imagerevisionid)
        .outerjoin(vh, vh.id == c.vmhostid)
        .outerjoin(hc, hc.id == vh.computerid)
        .outerjoin(vp, vp.id == vh.vmprofileid)
        .outerjoin(dsit, dsit.id == vp.datastoreimagetypeid)
        .outerjoin(rpit, rpit.id == vp.repositoryimagetypeid)
        .outerjoin(mn, mn.id == rs.managementnodeid)
        .where(rs.id == reservation_id)
    )


def _reservation_from_row(reservation_id: int, r: Any) -> Reservation:
    """Validate one row of :func:`_reservation_query` and build the core's dataclass."""
    rid = reservation_id
    if r["rq_id"] is None or r["state"] is None or r["laststate"] is None:
        raise VclDataError(
            f"reservation {rid}: request {r['request_id']} is missing or has an unknown state/laststate"
        )
    state: str = r["state"]
    laststate: str = r["laststate"]
    if state == "pending":
        state = laststate
    if r["computer_id"] is None:
        raise VclDataError(f"reservation {rid}: computer {r['res_computerid']} not found")
    comp = f"computer {r['computer_id']} ({r['computer_hostname']})"
    if r["computer_deleted"]:
        raise VclDataError(f"reservation {rid}: {comp} is deleted")
    if r["perlpackage"] != LIBVIRT_PERL_PACKAGE:
        raise NotLibvirtProvisionedError(
            f"reservation {rid}: {comp} is provisioned by provisioning id {r['provisioningid']} "
            f"({r['provisioning_name']!r}, module {r['perlpackage']!r}), not {LIBVIRT_PERL_PACKAGE}"
        )
    if r["image_id"] is None:
        raise VclDataError(f"reservation {rid}: image {r['res_imageid']} not found")
    if r["os_id"] is None:
        raise VclDataError(f"reservation {rid}: image {r['image_id']} has unknown OS id {r['image_osid']}")
    if r["rev_id"] is None:
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['res_imagerevisionid']} not found "
            f"(image {r['image_id']} {r['image_name']!r})"
        )
    if r["rev_imageid"] != r["image_id"]:
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['rev_id']} belongs to image {r['rev_imageid']}, "
            f"not to the reservation's image {r['image_id']}"
        )
    # The web creates the capture revision with deleted=1 (image.php:AJupdateImage); image.pm
    # clears it on success. Checkpoint captures follow the same web path.
    if r["rev_deleted"] and state not in ("image", "checkpoint"):
        raise ImageRevisionError(
            f"reservation {rid}: imagerevision {r['rev_id']} ({r['rev_imagename']!r}) is deleted "
            f"and the request state is {state!r}"
        )
    if r["vmhostid"] is None:
        raise NoVMHostError(f"reservation {rid}: {comp} has no VM host (computer.vmhostid is NULL)")
    if r["vmhost_id"] is None:
        raise NoVMHostError(
            f"reservation {rid}: {comp} refers to vmhost {r['vmhostid']}, which does not exist"
        )
    if r["host_id"] is None:
        raise NoVMHostError(
            f"reservation {rid}: vmhost {r['vmhost_id']} refers to host computer "
            f"{r['vmhost_computerid']}, which does not exist"
        )
    if r["vp_id"] is None:
        raise NoVMProfileError(
            f"reservation {rid}: vmhost {r['vmhost_id']} refers to vmprofile "
            f"{r['vmhost_vmprofileid']}, which does not exist"
        )
    if r["ds_imagetype"] is None or r["rp_imagetype"] is None:
        raise NoVMProfileError(
            f"reservation {rid}: vmprofile {r['vp_id']} ({r['vp_profilename']!r}) has unknown image "
            f"type ids datastore={r['vp_dsitid']} repository={r['vp_rpitid']}"
        )
    if r["mn_id"] is None:
        raise VclDataError(f"reservation {rid}: managementnode {r['res_mnid']} not found")
    datastore_path: str = r["vp_datastorepath"]
    vm_path: str | None = r["vp_vmpath"]
    profile = VMProfile(
        id=r["vp_id"],
        profile_name=r["vp_profilename"],
        datastore_path=datastore_path,
        vm_path=vm_path if vm_path else datastore_path,
        repository_path=r["vp_repositorypath"] or None,
        datastore_imagetype=r["ds_imagetype"],
        repository_imagetype=r["rp_imagetype"],
        virtualswitch0=r["vp_vs0"],
        virtualswitch1=r["vp_vs1"],
        eth0_generated=bool(r["vp_eth0gen"]),
        eth1_generated=bool(r["vp_eth1gen"]),
    )
    return Reservation(
        request_id=r["request_id"],
        reservation_id=r["reservation_id"],
        request_state=state,
        request_laststate=laststate,
        computer_id=r["computer_id"],
        computer_hostname=r["computer_hostname"],
        computer_short_name=short_name(r["computer_hostname"]),
        eth0_mac=r["eth0"],
        eth1_mac=r["eth1"],
        image_id=r["image_id"],
        image_name=r["image_name"],
        image_prettyname=r["image_prettyname"],
        image_project=r["image_project"],
        image_minram=int(r["image_minram"]),
        image_minprocnumber=int(r["image_minprocnumber"]),
        imagerevision_id=r["rev_id"],
        imagerevision_revision=int(r["rev_revision"]),
        imagerevision_imagename=r["rev_imagename"],
        os_name=r["os_name"],
        os_type=r["os_type"],
        os_minram=int(r["os_minram"]),
        vmhost_id=r["vmhost_id"],
        vmhost_computer_id=r["host_id"],
        vmhost_short_name=short_name(r["host_hostname"]),
        vmprofile=profile,
        management_node_id=r["mn_id"],
        management_node_short_name=short_name(r["mn_hostname"]),
    )


def _names_matching(pattern: re.Pattern[str], names: Iterable[str]) -> list[str]:
    return [n for n in names if pattern.search(n)]


def _due_query(s: Session, management_node_id: int, now: datetime | None) -> Any:
    """The single SELECT behind :meth:`VclStore.find_due_requests`.

    Driven by the ``reservation.managementnodeid`` index; joins request/state by primary key.
    The WHERE clause is a superset of check_time's non-zero results so that idle rows (future
    reservations, finished requests that are not removable yet) never leave the database.
    """
    st = aliased(m.State, name="st")
    lst = aliased(m.State, name="lst")
    c = aliased(m.Computer, name="c")
    hc = aliased(m.Computer, name="hc")
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
    return (
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
            hc.hostname.label("vmhost_hostname"),
            m.ServerRequest.id.label("serverrequest_id"),
            # The changelog poll only matters for inuse; skip the subquery for other states.
            _inuse_only(st.name, changelog_ts).label("changelog_ts"),
            base.label("dbnow"),
        )
        .select_from(rs)
        .join(rq, rq.id == rs.requestid)
        .join(st, st.id == rq.stateid)
        .join(lst, lst.id == rq.laststateid)
        .outerjoin(c, c.id == rs.computerid)
        .outerjoin(m.VMHost, m.VMHost.id == c.vmhostid)
        .outerjoin(hc, hc.id == m.VMHost.computerid)
        .outerjoin(m.ServerRequest, m.ServerRequest.requestid == rq.id)
        .where(rs.managementnodeid == management_node_id, st.name.in_(wanted), time_filter)
        .order_by(rs.id)
    )


def _inuse_only(state_col: Any, expr: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((state_col == "inuse", expr), else_=literal(None, m.VclDateTime()))


__all__ = [
    "ALLOWED_REQUEST_STATES",
    "LIBVIRT_PERL_PACKAGE",
    "ClaimOutcome",
    "DueAction",
    "DueRequest",
    "LoadLogEntry",
    "VclStore",
    "check_time",
    "short_name",
]
