"""The database side of ``new.pm``: load, reload, tomaintenance, and failing a reservation
(reference sections 3.4, 3.9). Functions take an open session; :class:`VclStore` owns the
transaction, so each of them commits or rolls back as a whole."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.engine import db_now
from worker.db.errors import VclDataError
from worker.db.loadlog import insert_loadlog, state_exit_loadlog, update_log_ending
from worker.db.reads import noimage_revision
from worker.db.requests import VclIds, fail_claimed, require_claimed, transition
from worker.reservation import Reservation

log = logging.getLogger(__name__)

#: Load states finished by :func:`finish_load`: claimed state -> (request, computer) result.
LOAD_RESULTS: dict[str, tuple[str, str]] = {
    "new": ("reserved", "reserved"),
    "reinstall": ("reserved", "reserved"),
    "reload": ("complete", "available"),
    "imageprep": ("complete", "available"),
    "tovmhostinuse": ("complete", "vmhostinuse"),
}


def set_computer_state(s: Session, ids: VclIds, computer_id: int, state: str, **extra: Any) -> None:
    s.execute(
        update(m.Computer)
        .where(m.Computer.id == computer_id)
        .values(stateid=ids.state(s, state), **extra)
        .execution_options(synchronize_session=False)
    )


def start_load(s: Session, ids: VclIds, r: Reservation) -> None:
    """``new.pm:reload_image`` up to ``provisioner->load()``: statuscheck, loadimageblade,
    computer -> reloading (+ info), doesimageexists, info (calling load)."""
    require_claimed(s, ids, r)
    now = db_now(s)
    rid, cid, image = r.reservation_id, r.computer_id, r.imagerevision_imagename
    insert_loadlog(s, ids, rid, cid, "statuscheck", info="checking status of node", now=now)
    insert_loadlog(
        s,
        ids,
        rid,
        cid,
        "loadimageblade",
        info=f"{r.computer_short_name} must be reloaded with {image}",
        now=now,
    )
    set_computer_state(s, ids, cid, "reloading")
    insert_loadlog(s, ids, rid, cid, "info", info="computer state set to reloading", now=now)
    insert_loadlog(s, ids, rid, cid, "doesimageexists", info=f"image {image} exists", now=now)
    insert_loadlog(s, ids, rid, cid, "info", info="calling libvirt load()", now=now)


def _load_result(r: Reservation, what: str) -> tuple[str, str]:
    result = LOAD_RESULTS.get(r.request_state)
    if result is None:
        raise VclDataError(
            f"{what}: request {r.request_id} was claimed from {r.request_state!r}, not a load state"
        )
    return result


def finish_load(s: Session, ids: VclIds, r: Reservation) -> None:
    """Success of ``new.pm`` (reference 3.4 step 8-9, 3.9): see :meth:`VclStore.finish_load`."""
    req_state, comp_state = _load_result(r, "finish_load")
    if not transition(s, ids, r.request_id, req_state, r.request_state):
        return
    now = db_now(s)
    rid, cid = r.reservation_id, r.computer_id
    insert_loadlog(
        s, ids, rid, cid, "loadimagecomplete", info=f"image {r.imagerevision_imagename} loaded", now=now
    )
    set_computer_state(s, ids, cid, comp_state, currentimageid=r.image_id, imagerevisionid=r.imagerevision_id)
    insert_loadlog(s, ids, rid, cid, "nodeready", info=f"{r.computer_short_name} is ready", now=now)
    state_exit_loadlog(s, ids, r, r.request_state, now)


def record_generated_macs(s: Session, r: Reservation, eth0: str | None, eth1: str | None) -> dict[str, str]:
    """Write the MACs a load generated for the computer's NICs into ``computer.eth0macaddress`` /
    ``eth1macaddress`` (vmprofile ``eth0generated``/``eth1generated``): capture and the power calls
    find the computer's domain by these columns. vcld keeps them in its in-memory DataStructure only
    (libvirt.pm:generate_domain_xml → set_computer_eth0_mac_address), which lasts one vcld process;
    a worker's capture runs in another task. A MAC another live computer already holds (the columns
    are UNIQUE with ``datedeleted``) is not written. Returns {column: MAC} of what was written."""
    written: dict[str, str] = {}
    for column, mac in (("eth0macaddress", eth0), ("eth1macaddress", eth1)):
        if not mac:
            continue
        col = getattr(m.Computer, column)
        other = s.execute(
            select(m.Computer.id).where(col == mac, m.Computer.id != r.computer_id, m.Computer.deleted == 0)
        ).first()
        if other is not None:
            log.warning(
                "computer %s: generated %s %s is computer %s's already; not recorded",
                *(r.computer_id, column, mac, other[0]),
            )
            continue
        s.execute(
            update(m.Computer)
            .where(m.Computer.id == r.computer_id)
            .values({column: mac})
            .execution_options(synchronize_session=False)
        )
        written[column] = mac
    return written


def fail_load(s: Session, ids: VclIds, r: Reservation, message: str) -> None:
    """``reservation_failed`` for a load state: see :meth:`VclStore.fail_load`."""
    _load_result(r, "fail_load")
    if not transition(s, ids, r.request_id, "failed", r.request_state):
        return
    now = db_now(s)
    rid, cid = r.reservation_id, r.computer_id
    insert_loadlog(s, ids, rid, cid, "loadimagefailed", info=message, now=now)
    insert_loadlog(s, ids, rid, cid, "failed", info=message, now=now)
    set_computer_state(s, ids, cid, "failed")
    if r.request_state in ("new", "reserved"):
        update_log_ending(s, r.request_id, "failed", now)
    state_exit_loadlog(s, ids, r, r.request_state, now)


def finish_maintenance(s: Session, ids: VclIds, r: Reservation) -> None:
    """``new.pm`` tomaintenance + ``libvirt.pm:post_maintenance_action``: see
    :meth:`VclStore.finish_maintenance`."""
    if r.request_state != "tomaintenance":
        raise VclDataError(
            f"finish_maintenance: request {r.request_id} was claimed from {r.request_state!r}, "
            "not 'tomaintenance'"
        )
    if not transition(s, ids, r.request_id, "complete", "tomaintenance"):
        return
    now = db_now(s)
    noimage = noimage_revision(s)
    if noimage is None:
        raise VclDataError("imagerevision 'noimage' does not exist")
    set_computer_state(
        s,
        ids,
        r.computer_id,
        "maintenance",
        currentimageid=noimage[0],
        imagerevisionid=noimage[1],
        vmhostid=None,
    )
    state_exit_loadlog(s, ids, r, "tomaintenance", now)


def fail_request(s: Session, ids: VclIds, request_id: int, reservation_id: int, message: str) -> None:
    """``reservation_failed`` when the reservation's data cannot even be loaded: see
    :meth:`VclStore.fail_request`."""
    target = fail_claimed(s, ids, request_id)
    if target is None:
        return
    computer = s.execute(
        select(m.Computer.id, m.Computer.stateid)
        .join(m.Reservation, m.Reservation.computerid == m.Computer.id)
        .where(m.Reservation.id == reservation_id)
    ).one_or_none()
    if computer is None:
        return
    insert_loadlog(s, ids, reservation_id, computer.id, "failed", info=message[:4000], now=db_now(s))
    if computer.stateid != ids.state(s, "maintenance"):
        set_computer_state(s, ids, computer.id, "maintenance" if target == "maintenance" else "failed")


__all__ = [
    "LOAD_RESULTS",
    "fail_load",
    "fail_request",
    "finish_load",
    "finish_maintenance",
    "record_generated_macs",
    "set_computer_state",
    "start_load",
]
