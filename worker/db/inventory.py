"""What the VCL database says is live on one VM host (the input of ``vcl-worker reap``).

A ``(computer short name, imageid, revision)`` is *live* when the computer is on this VM host
(``computer.vmhostid``), not deleted, not in ``maintenance``/``deleted`` state, and the revision is
the computer's current ``imagerevisionid`` or that of a reservation on it whose request is active
(any state but ``complete``/``failed``; ``pending`` counts, so a load in progress is live). A
computer with an ``image``/``checkpoint`` request (pending or not) or a ``maintenance`` request (a
failed capture kept for the admin) is *protected* as a whole. Only ``virtualmachine`` computers are
listed: names of other computers are never the reaper's to touch. The same live set decides over a
computer's boot snapshot files (a snapshot of a live revision is never an orphan).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from worker.db import models as m
from worker.db.errors import VclDataError
from worker.db.reservation_row import short_name

#: Request states whose reservations no longer hold a revision live.
_FINISHED_STATES = ("complete", "failed")
#: Request states (or claimed-from states of a pending request) that protect a whole computer.
_PROTECTING_STATES = ("image", "checkpoint", "maintenance")
#: Computer states that take a computer off its VM host for the reaper.
_OFF_HOST_STATES = ("maintenance", "deleted")

LiveKey = tuple[str, int, int]  # (computer short name, imageid, revision)


class UnknownVMHostError(VclDataError, ValueError):
    """The VM host name matches no ``vmhost`` row, or more than one."""


@dataclass(frozen=True, slots=True)
class InventoryComputer:
    id: int
    short_name: str
    vmhost_id: int | None
    deleted: bool
    state: str

    def on_host(self, vmhost_id: int) -> bool:
        """On VM host ``vmhost_id`` for the reaper: placed there, not deleted, not in maintenance."""
        return self.vmhost_id == vmhost_id and not self.deleted and self.state not in _OFF_HOST_STATES


@dataclass(frozen=True, slots=True)
class HostInventory:
    vmhost_id: int
    vmpath: str  # normalised; the datastorepath when the profile has no vmpath
    datastorepath: str
    imagetype: str  # the profile's datastore image type (overlay file extension)
    computers: Mapping[str, tuple[InventoryComputer, ...]]  # every VM computer, by short name
    live: frozenset[LiveKey]
    protected: frozenset[str]  # short names of computers nothing of which may be removed
    master_stems: frozenset[str]  # every imagerevision.imagename and image.name
    # short names of computers on another VM host whose vmpath is this one's (a shared datastore):
    # their files are that host's to reap, never this one's
    shared: frozenset[str] = frozenset()


def host_inventory(s: Session, vmhost_name: str) -> HostInventory:
    """Read the inventory of the VM host named ``vmhost_name`` (short or full hostname)."""
    hc = aliased(m.Computer)
    hosts = s.execute(
        select(
            m.VMHost.id, hc.hostname, m.VMProfileRow.vmpath, m.VMProfileRow.datastorepath, m.ImageType.name
        )
        .join(hc, hc.id == m.VMHost.computerid)
        .join(m.VMProfileRow, m.VMProfileRow.id == m.VMHost.vmprofileid)
        .outerjoin(m.ImageType, m.ImageType.id == m.VMProfileRow.datastoreimagetypeid)
    ).all()
    match = [h for h in hosts if vmhost_name in (short_name(h[1]), h[1])]
    if len(match) != 1:
        raise UnknownVMHostError(
            f"vmhost {vmhost_name!r}: {len(match)} matching vmhost rows (expected exactly 1)"
        )
    vmhost_id, _hostname, vmpath, datastorepath, imagetype = match[0]
    here = os.path.normpath(vmpath or datastorepath)
    sharing = {h[0] for h in hosts if h[0] != vmhost_id and os.path.normpath(h[2] or h[3]) == here}
    st = aliased(m.State)
    comps = s.execute(
        select(
            m.Computer.id,
            m.Computer.hostname,
            m.Computer.vmhostid,
            m.Computer.deleted,
            st.name,
            m.ImageRevision.imageid,
            m.ImageRevision.revision,
        )
        .join(st, st.id == m.Computer.stateid)
        .outerjoin(m.ImageRevision, m.ImageRevision.id == m.Computer.imagerevisionid)
        .where(m.Computer.type == "virtualmachine")
    ).all()
    lst = aliased(m.State)
    reservations = s.execute(
        select(m.Reservation.computerid, m.Reservation.imageid, m.ImageRevision.revision, st.name, lst.name)
        .join(m.Request, m.Request.id == m.Reservation.requestid)
        .join(st, st.id == m.Request.stateid)
        .join(lst, lst.id == m.Request.laststateid)
        .outerjoin(m.ImageRevision, m.ImageRevision.id == m.Reservation.imagerevisionid)
    ).all()
    stems = set(s.execute(select(m.ImageRevision.imagename)).scalars())
    stems |= set(s.execute(select(m.Image.name)).scalars())

    by_short: dict[str, list[InventoryComputer]] = {}
    by_id: dict[int, InventoryComputer] = {}
    live: set[LiveKey] = set()
    protected: set[str] = set()
    shared: set[str] = set()
    for cid, hostname, vhid, deleted, state, imageid, rev in comps:
        c = InventoryComputer(int(cid), short_name(hostname), vhid, bool(deleted), state)
        if vhid in sharing:
            shared.add(c.short_name)
        by_short.setdefault(c.short_name, []).append(c)
        by_id[c.id] = c
        if c.on_host(vmhost_id) and imageid is not None and rev is not None:
            live.add((c.short_name, int(imageid), int(rev)))
    for cid, imageid, rev, state, laststate in reservations:
        comp = by_id.get(cid)
        if comp is None:
            continue
        if state in _PROTECTING_STATES or (state == "pending" and laststate in _PROTECTING_STATES):
            protected.add(comp.short_name)
        if state in _FINISHED_STATES or not comp.on_host(vmhost_id) or rev is None:
            continue
        live.add((comp.short_name, int(imageid), int(rev)))
    return HostInventory(
        vmhost_id=int(vmhost_id),
        vmpath=here,
        datastorepath=os.path.normpath(datastorepath),
        imagetype=imagetype or "qcow2",
        computers={k: tuple(v) for k, v in by_short.items()},
        live=frozenset(live),
        protected=frozenset(protected),
        master_stems=frozenset(x for x in stems if x),
        shared=frozenset(shared),
    )


__all__ = ["HostInventory", "InventoryComputer", "LiveKey", "UnknownVMHostError", "host_inventory"]
