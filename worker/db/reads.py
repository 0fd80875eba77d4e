"""Small read-only lookups for the CLI, the dispatcher, task routing and the tests.
Functions take an open session; :class:`VclStore` owns the transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.errors import VclDataError
from worker.db.reservation_row import short_name


def request_states(s: Session, request_id: int) -> tuple[str, str] | None:
    """(state name, laststate name) of the request, or ``None`` if it does not exist."""
    st, lst = aliased(m.State), aliased(m.State)
    row = s.execute(
        select(st.name, lst.name)
        .select_from(m.Request)
        .join(st, st.id == m.Request.stateid)
        .join(lst, lst.id == m.Request.laststateid)
        .where(m.Request.id == request_id)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def reservation_request(s: Session, reservation_id: int) -> tuple[int, str, str] | None:
    """(request id, state name, laststate name) of a reservation's request, or ``None``."""
    st, lst = aliased(m.State), aliased(m.State)
    row = s.execute(
        select(m.Request.id, st.name, lst.name)
        .select_from(m.Reservation)
        .join(m.Request, m.Request.id == m.Reservation.requestid)
        .join(st, st.id == m.Request.stateid)
        .join(lst, lst.id == m.Request.laststateid)
        .where(m.Reservation.id == reservation_id)
    ).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def computer_state(s: Session, computer_id: int) -> str:
    name = s.execute(
        select(m.State.name)
        .join(m.Computer, m.Computer.stateid == m.State.id)
        .where(m.Computer.id == computer_id)
    ).scalar_one_or_none()
    if name is None:
        raise VclDataError(f"computer {computer_id} not found")
    return name


def vmhost_short_name(s: Session, reservation_id: int) -> str | None:
    """Short hostname of the VM host serving the reservation's computer (task routing)."""
    host = aliased(m.Computer)
    hostname = s.execute(
        select(host.hostname)
        .select_from(m.Reservation)
        .join(m.Computer, m.Computer.id == m.Reservation.computerid)
        .join(m.VMHost, m.VMHost.id == m.Computer.vmhostid)
        .join(host, host.id == m.VMHost.computerid)
        .where(m.Reservation.id == reservation_id)
    ).scalar_one_or_none()
    return None if hostname is None else short_name(hostname)


__all__ = ["computer_state", "request_states", "reservation_request", "vmhost_short_name"]


def noimage_revision(s: Session) -> tuple[int, int] | None:
    """(image id, imagerevision id) of VCL's ``noimage`` (a computer with nothing loaded), or None."""
    row = s.execute(
        select(m.ImageRevision.imageid, m.ImageRevision.id)
        .where(m.ImageRevision.imagename == "noimage")
        .order_by(m.ImageRevision.production.desc(), m.ImageRevision.id)
        .limit(1)
    ).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))
