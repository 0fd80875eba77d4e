"""``vcl-worker reap``: domains and overlays on this VM host that belong to no live reservation.

What "belongs to a live reservation" means here (the reaper keeps everything that does):

* Only names VCL itself produces are ever considered: domains ``<short>_[<pretty>_]<imageid>-v<rev>``
  and overlay files ``<vmpath>/<short>_<imageid>-v<rev>.<datastore imagetype>`` (directly in the
  vmprofile's vmpath, no subdirectories), where ``<short>`` is the short hostname of a
  ``virtualmachine`` computer in the VCL database. Anything else on the host (other tenants' domains,
  masters, XML files, ``.part`` files, names of unknown computers) is never touched.
* A ``(computer, imageid, revision)`` is *live* when the computer is on this VM host
  (``computer.vmhostid`` = the vmhost named by ``--vmhost``/``VCL_VMHOST``), is not deleted, is not in
  ``maintenance``/``deleted`` state, and the revision is either the computer's current
  ``computer.imagerevisionid`` or the revision of a reservation on it whose request is active (any
  state but ``complete``/``failed``; ``pending`` counts, so a load in progress is never reaped).
* A computer with an ``image``/``checkpoint`` request (pending or not) or a ``maintenance`` request
  (a failed capture, kept for the admin) is protected as a whole: nothing of it is reaped.
* Extra guards on files: a file whose stem is an ``imagerevision.imagename`` or ``image.name`` (a
  master) is never removed, nor one without a backing file (overlays always have one; masters never),
  nor one used as a disk by a domain that is kept, nor one that another kept file uses as its backing
  file. Files in datastorepath are only looked at when datastorepath is the vmpath.

Without ``--apply`` the reaper only prints what it would remove. With ``--apply`` it destroys and
undefines the orphan domains (without deleting their disks through libvirt), then unlinks the orphan
overlays. The bare-short-name domains VCL uses when names exceed 48 characters are not recognised
(their revision cannot be read from the name) and are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from worker.hypervisors import qemuimg
from worker.hypervisors.errors import PermanentError, ProvisioningError
from worker.hypervisors.guest import Guest
from worker.hypervisors.host import LibvirtHost

log = logging.getLogger(__name__)

_DOMAIN_RE = re.compile(r"^(?P<short>[^_:/]+)_(?:.*_)?(?P<imageid>\d+)-v(?P<rev>\d+)$")
_ACTIVE_EXCLUDED = ("complete", "failed")
_PROTECTING_STATES = ("image", "checkpoint", "maintenance")
Key = tuple[str, int, int]


@dataclass(frozen=True)
class Orphan:
    kind: str  # "domain" or "overlay"
    name: str  # domain name or absolute file path
    computer: str
    reason: str


@dataclass
class ReapPlan:
    vmhost: str
    vmhost_id: int
    vmpath: str
    datastorepath: str
    orphans: list[Orphan] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    @property
    def domains(self) -> list[Orphan]:
        return [o for o in self.orphans if o.kind == "domain"]

    @property
    def overlays(self) -> list[Orphan]:
        return [o for o in self.orphans if o.kind == "overlay"]


@dataclass
class _Site:
    vmhost_id: int
    vmpath: str
    datastorepath: str
    imagetype: str
    computers: dict[str, list[dict[str, Any]]]  # short name -> computer rows
    live: set[Key]
    protected: set[str]
    master_stems: set[str]


def _short(hostname: str) -> str:
    return hostname.split(".", 1)[0]


def _load_site(sf: sessionmaker[Session], vmhost_name: str) -> _Site:
    with sf.begin() as s:
        hosts = s.execute(
            text(
                "SELECT v.id, hc.hostname, p.vmpath, p.datastorepath, it.name "
                "FROM vmhost v JOIN computer hc ON hc.id = v.computerid "
                "JOIN vmprofile p ON p.id = v.vmprofileid "
                "LEFT JOIN imagetype it ON it.id = p.datastoreimagetypeid"
            )
        ).all()
        match = [h for h in hosts if _short(h[1]) == vmhost_name or h[1] == vmhost_name]
        if len(match) != 1:
            raise ValueError(
                f"vmhost {vmhost_name!r}: {len(match)} matching vmhost rows (expected exactly 1)"
            )
        vmhost_id, _hostname, vmpath, datastorepath, imagetype = match[0]
        comps = s.execute(
            text(
                "SELECT c.id, c.hostname, c.vmhostid, c.deleted, st.name, r.imageid, r.revision "
                "FROM computer c JOIN state st ON st.id = c.stateid "
                "LEFT JOIN imagerevision r ON r.id = c.imagerevisionid "
                "WHERE c.type = 'virtualmachine'"
            )
        ).all()
        resv = s.execute(
            text(
                "SELECT v.computerid, v.imageid, r.revision, st.name, lst.name "
                "FROM reservation v JOIN request q ON q.id = v.requestid "
                "JOIN state st ON st.id = q.stateid JOIN state lst ON lst.id = q.laststateid "
                "LEFT JOIN imagerevision r ON r.id = v.imagerevisionid"
            )
        ).all()
        stems = {row[0] for row in s.execute(text("SELECT imagename FROM imagerevision")).all()}
        stems |= {row[0] for row in s.execute(text("SELECT name FROM image")).all()}
    computers: dict[str, list[dict[str, Any]]] = {}
    by_id: dict[int, dict[str, Any]] = {}
    for cid, hostname, vhid, deleted, state, imageid, rev in comps:
        c = {
            "id": cid,
            "short": _short(hostname),
            "vmhostid": vhid,
            "deleted": bool(deleted),
            "state": state,
            "imageid": imageid,
            "revision": rev,
        }
        computers.setdefault(c["short"], []).append(c)
        by_id[cid] = c

    def on_this_host(c: dict[str, Any]) -> bool:
        return bool(
            c["vmhostid"] == vmhost_id and not c["deleted"] and c["state"] not in ("maintenance", "deleted")
        )

    live: set[Key] = set()
    protected: set[str] = set()
    for c in by_id.values():
        if on_this_host(c) and c["imageid"] is not None and c["revision"] is not None:
            live.add((c["short"], int(c["imageid"]), int(c["revision"])))
    for cid, imageid, rev, state, laststate in resv:
        comp = by_id.get(cid)
        if comp is None:
            continue
        if state in _PROTECTING_STATES or (state == "pending" and laststate in _PROTECTING_STATES):
            protected.add(comp["short"])
        if state in _ACTIVE_EXCLUDED or not on_this_host(comp) or rev is None:
            continue
        live.add((comp["short"], int(imageid), int(rev)))
    return _Site(
        vmhost_id=int(vmhost_id),
        vmpath=os.path.normpath(vmpath or datastorepath),
        datastorepath=os.path.normpath(datastorepath),
        imagetype=imagetype or "qcow2",
        computers=computers,
        live=live,
        protected=protected,
        master_stems={st for st in stems if st},
    )


def _why_dead(site: _Site, short: str, imageid: int, rev: int) -> str | None:
    """None when ``short``'s ``imageid``/``rev`` is live (or protected); else the reason it is not."""
    if short not in site.computers:
        return "skip"  # not a VCL computer: never ours to touch
    if short in site.protected:
        return None
    if (short, imageid, rev) in site.live:
        return None
    rows = site.computers[short]
    if not any(c["vmhostid"] == site.vmhost_id for c in rows):
        return f"computer {short} is not on this VM host"
    if all(c["deleted"] for c in rows):
        return f"computer {short} is deleted"
    if all(c["state"] in ("maintenance", "deleted") for c in rows):
        return f"computer {short} is in {rows[0]['state']}"
    return f"revision {imageid}-v{rev} is neither current on {short} nor of an active request"


def plan_reap(sf: sessionmaker[Session], host: LibvirtHost, vmhost_name: str) -> ReapPlan:
    """Work out (without changing anything) which domains and overlays are orphans."""
    site = _load_site(sf, vmhost_name)
    plan = ReapPlan(vmhost_name, site.vmhost_id, site.vmpath, site.datastorepath)
    kept_disks: set[str] = set()
    orphan_disks: set[str] = set()
    for dom in host.list_domains():
        g = Guest(host, dom)
        name = g.name
        try:
            disks = {os.path.realpath(p) for p in g.disk_paths()}
        except ProvisioningError:
            disks = set()
        m = _DOMAIN_RE.match(name)
        why = _why_dead(site, m["short"], int(m["imageid"]), int(m["rev"])) if m else "skip"
        if why is None or why == "skip":
            kept_disks |= disks
            if why is None:
                plan.kept.append((name, "live"))
            continue
        assert m is not None
        plan.orphans.append(Orphan("domain", name, m["short"], why))
        orphan_disks |= disks
    overlay_re = re.compile(
        r"^(?P<short>[^_/]+)_(?P<imageid>\d+)-v(?P<rev>\d+)\." + re.escape(site.imagetype) + r"$"
    )
    candidates: list[tuple[str, re.Match[str]]] = []
    backing_in_use: set[str] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(site.vmpath), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            m = overlay_re.match(entry.name)
            if m and m["short"] in site.computers:
                candidates.append((entry.path, m))
    verdicts: list[tuple[str, str, str]] = []
    for path, m in candidates:
        real = os.path.realpath(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        why = _why_dead(site, m["short"], int(m["imageid"]), int(m["rev"]))
        try:
            inf = qemuimg.info(path)
            backing = inf.full_backing_filename or inf.backing_filename
        except PermanentError:
            inf, backing = None, None
        if backing:
            backing_in_use.add(os.path.realpath(os.path.join(os.path.dirname(path), backing)))
        if why is None:
            plan.kept.append((path, "live"))
        elif stem in site.master_stems:
            plan.kept.append((path, "named like a master image"))
        elif inf is None or not backing:
            plan.kept.append((path, "no backing file: not an overlay"))
        elif real in kept_disks:
            plan.kept.append((path, "disk of a kept domain"))
        else:
            verdicts.append((path, m["short"], why))
    for path, short, why in verdicts:
        if os.path.realpath(path) in backing_in_use:
            plan.kept.append((path, "backing file of another file"))
            continue
        plan.orphans.append(Orphan("overlay", path, short, why))
    return plan


def apply_plan(plan: ReapPlan, host: LibvirtHost) -> list[str]:
    """Remove the plan's orphans (domains first, then overlays). Returns what was removed."""
    removed: list[str] = []
    for o in plan.domains:
        dom = host.lookup_domain(o.name)
        if dom is None:
            continue
        g = Guest(host, dom)
        if g.is_active():
            g.destroy()
        g.undefine()
        removed.append(o.name)
    for o in plan.overlays:
        try:
            os.unlink(o.name)
        except FileNotFoundError:
            continue
        removed.append(o.name)
    return removed


def format_plan(plan: ReapPlan, applied: bool) -> Iterable[str]:
    verb = "removed" if applied else "would remove"
    yield f"vmhost {plan.vmhost} (vmhost.id {plan.vmhost_id}), vmpath {plan.vmpath}"
    for o in plan.orphans:
        yield f"{verb} {o.kind} {o.name} ({o.reason})"
    yield (
        f"{len(plan.domains)} orphan domain(s), {len(plan.overlays)} orphan overlay(s), "
        f"{len(plan.kept)} kept"
        + ("" if applied or not plan.orphans else "; run with --apply to remove them")
    )


def run_reap(apply: bool, vmhost: str | None = None) -> int:
    """CLI entry: 0 on success, 2 when the VM host cannot be determined."""
    from worker import wiring as runtime
    from worker.hypervisors.host import get_host

    name = vmhost or os.environ.get("VCL_VMHOST")
    if not name:
        print("vcl-worker reap: give --vmhost NAME or set VCL_VMHOST", flush=True)
        return 2
    settings = runtime.settings()
    store = runtime.store()
    host = get_host(settings.libvirt_uri)
    try:
        plan = plan_reap(store._sf, host, name)
    except ValueError as exc:
        print(f"vcl-worker reap: {exc}", flush=True)
        return 2
    if apply:
        done = set(apply_plan(plan, host))
        plan.orphans = [o for o in plan.orphans if o.name in done]
    for line in format_plan(plan, apply):
        print(line, flush=True)
    return 0


__all__ = ["Orphan", "ReapPlan", "apply_plan", "format_plan", "plan_reap", "run_reap"]
