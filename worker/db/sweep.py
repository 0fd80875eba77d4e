"""The dispatcher's sweep: the ``pending`` requests of a management node with their claim rows.

vcld never looks at ``pending`` requests (a live process owns each); here a claim is owned by a
Celery task, which can be lost (dispatcher killed between claim and ``send_task``), or end without
recording its outcome. The rows listed here let the dispatcher decide per claim (see
:func:`worker.dispatcher.sweep`). Functions take an open session; the store commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.claims import ClaimRecord, claim_record, claim_records, record_claim
from worker.db.engine import db_now
from worker.db.requests import VclIds
from worker.db.reservation_row import (
    LIBVIRT_PERL_PACKAGE,
    VMHOST_COMPUTER,
    join_vmhost_and_module,
    short_name,
)


@dataclass(frozen=True, slots=True)
class PendingClaim:
    request_id: int
    reservation_id: int
    claimed_from: str  # the request's laststate: what the claim was taken from
    computer_id: int
    vmhost_short_name: str | None
    perlpackage: str | None  # module.perlpackage of the computer's provisioning
    record: ClaimRecord
    age: float  # seconds since the claim row was written (database clock)


def pending_claims(s: Session, ids: VclIds, management_node_id: int) -> list[PendingClaim]:
    """Every ``pending`` request of ``management_node_id``. A libvirt computer's claim without a row
    (claimed by an older worker) gets one now, naming no task, so it is judged after the grace period
    like a lost one."""
    lst = aliased(m.State, name="lst")
    query = (
        select(
            m.Request.id,
            m.Reservation.id,
            lst.name,
            m.Reservation.computerid,
            VMHOST_COMPUTER.hostname,
            m.Module.perlpackage,
        )
        .select_from(m.Reservation)
        .join(m.Request, m.Request.id == m.Reservation.requestid)
        .join(lst, lst.id == m.Request.laststateid)
    )
    rows = s.execute(
        join_vmhost_and_module(query, m.Reservation.computerid)
        .where(
            m.Reservation.managementnodeid == management_node_id,
            m.Request.stateid == ids.state(s, "pending"),
        )
        .order_by(m.Reservation.id)
    ).all()
    now = db_now(s)
    records = claim_records(s, ids, [int(row[1]) for row in rows])
    out: list[PendingClaim] = []
    for request_id, reservation_id, laststate, computer_id, host, perlpackage in rows:
        rec = records.get(int(reservation_id))
        if rec is None and perlpackage != LIBVIRT_PERL_PACKAGE:
            continue  # not the dispatcher's computer: its claim is none of the sweep's business
        if rec is None:
            record_claim(s, ids, reservation_id, "", sent=False)
            rec = claim_record(s, ids, reservation_id)
            if rec is None:
                continue
        age = (now - rec.timestamp).total_seconds() if rec.timestamp is not None else 0.0
        out.append(
            PendingClaim(
                int(request_id),
                int(reservation_id),
                str(laststate),
                int(computer_id),
                short_name(host) if host else None,
                perlpackage,
                rec,
                age,
            )
        )
    return out


__all__ = ["PendingClaim", "pending_claims"]
