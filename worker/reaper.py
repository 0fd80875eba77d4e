"""``vcl-worker reap``: domains and overlays on this VM host that belong to no live reservation.

What "belongs to a live reservation" means here (the reaper keeps everything that does; the
database side of it is :mod:`worker.db.inventory`):

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
* Boot snapshot files ``<vmpath>/<short>_<imageid>-v<rev>.bootsnap.{json,mem,<imagetype>}`` (and their
  ``.part`` files) follow the same rule: kept while their ``(computer, imageid, revision)`` is live or
  the computer protected, removed otherwise (manifest first, so a half-removed set is never used).
* Extra guards on files: a file whose stem is an ``imagerevision.imagename`` or ``image.name`` (a
  master) is never removed, nor one without a backing file (overlays always have one; masters never),
  nor one used as a disk by a domain that is kept, nor one that another kept file uses as its backing
  file. Files in datastorepath are only looked at when datastorepath is the vmpath. Files of a
  computer on another VM host whose vmpath is this one's (a datastore the hosts share, as with NFS)
  are that host's: never removed here (its domains on this host still are).

Without ``--apply`` the reaper only prints what it would remove. With ``--apply`` it first checks
that ``--vmhost`` names the host it runs on (its host names or ``VCL_HOST_ALIASES``; reaping another
host's inventory here would call every local domain an orphan) and that libvirt is this host's. It
then destroys and undefines the orphan domains (without deleting their disks through libvirt), then
unlinks the orphan overlays, each under its computer's lock (the one every task holds) and only
after planning again under that lock finds the item still an orphan: a load that started since the
listing wins. The vmpath from the database must lie under ``VCL_ALLOWED_ROOTS`` before it is even
listed. Overlays are read with their format given and their image lock respected, so a disk a
running guest writes is kept. The bare-short-name domains VCL uses when names exceed 48 characters
are not recognised (their revision cannot be read from the name) and are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.config import Settings
from worker.db.inventory import HostInventory, UnknownVMHostError
from worker.db.store import VclStore
from worker.hypervisors import qemuimg
from worker.hypervisors.boot_snapshot_files import file_re as snapshot_file_re
from worker.hypervisors.errors import InvalidInputError, PermanentError, ProvisioningError
from worker.hypervisors.host import LibvirtHost, get_host
from worker.hypervisors.roots import under_roots
from worker.tasks.locks import HeldLock, computer_lock

log = logging.getLogger(__name__)

_DOMAIN_RE = re.compile(r"^(?P<short>[^_:/]+)_(?:.*_)?(?P<imageid>\d+)-v(?P<rev>\d+)$")


# Seconds the reaper waits for a computer's lock; a busy computer is skipped, not waited for.
REAP_LOCK_WAIT = 10.0
# TTL of the reaper's hold on a computer lock: one domain or file removal, then it is released.
REAP_LOCK_TTL = 300
# The hold is a lease renewed by a heartbeat while the reaper works (a reaper killed mid-removal
# frees the computer within it); one found lost stops the removal (the item is kept).
REAP_LOCK_LEASE = 60
# Reasons --apply adds to ``kept`` (printed, unlike the listing's own reasons).
RECHECKED_LIVE = "live again when re-checked under the computer lock"
NOT_REMOVED = "not removed:"
SHARED = "a computer of another VM host sharing this vmpath"


class OrphanKind(StrEnum):
    DOMAIN = "domain"
    OVERLAY = "overlay"
    SNAPSHOT = "snapshot"  # a boot snapshot's file


@dataclass(frozen=True)
class Orphan:
    kind: OrphanKind
    name: str  # domain name or absolute file path
    computer: str
    reason: str
    computer_ids: tuple[int, ...] = ()  # every computer row of that short name (their locks)


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
        return [o for o in self.orphans if o.kind == OrphanKind.DOMAIN]

    @property
    def overlays(self) -> list[Orphan]:
        return [o for o in self.orphans if o.kind == OrphanKind.OVERLAY]

    @property
    def snapshots(self) -> list[Orphan]:
        return [o for o in self.orphans if o.kind == OrphanKind.SNAPSHOT]


def _why_dead(site: HostInventory, short: str, imageid: int, rev: int) -> str | None:
    """None when ``short``'s ``imageid``/``rev`` is live (or protected); else the reason it is not."""
    if short not in site.computers:
        return "skip"  # not a VCL computer: never ours to touch
    if short in site.protected:
        return None
    if (short, imageid, rev) in site.live:
        return None
    rows = site.computers[short]
    if not any(c.vmhost_id == site.vmhost_id for c in rows):
        return f"computer {short} is not on this VM host"
    if all(c.deleted for c in rows):
        return f"computer {short} is deleted"
    if all(c.state in ("maintenance", "deleted") for c in rows):
        return f"computer {short} is in {rows[0].state}"
    return f"revision {imageid}-v{rev} is neither current on {short} nor of an active request"


def _ids(site: HostInventory, short: str) -> tuple[int, ...]:
    return tuple(sorted(c.id for c in site.computers.get(short, ())))


def plan_reap(store: VclStore, host: LibvirtHost, vmhost_name: str, roots: Sequence[str]) -> ReapPlan:
    """Work out (without changing anything) which domains and overlays are orphans.
    Raises :class:`~worker.db.inventory.UnknownVMHostError` for an unknown ``vmhost_name`` and
    :class:`InvalidInputError` for a vmpath outside ``roots`` (the settings' ``roots``)."""
    site = store.host_inventory(vmhost_name)
    # vmpath comes from the database: nothing is listed (or later removed) outside the roots
    vmpath = under_roots(site.vmpath, roots, f"vmprofile.vmpath of vmhost {vmhost_name!r}")
    plan = ReapPlan(vmhost_name, site.vmhost_id, vmpath, site.datastorepath)
    kept_disks: set[str] = set()
    orphan_disks: set[str] = set()
    for g in host.list_guests():
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
        plan.orphans.append(Orphan(OrphanKind.DOMAIN, name, m["short"], why, _ids(site, m["short"])))
        orphan_disks |= disks
    overlay_re = re.compile(
        r"^(?P<short>[^_/]+)_(?P<imageid>\d+)-v(?P<rev>\d+)\." + re.escape(site.imagetype) + r"$"
    )
    candidates: list[tuple[str, re.Match[str]]] = []
    backing_in_use: set[str] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(vmpath), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            m = overlay_re.match(entry.name)
            if m and m["short"] in site.computers:
                candidates.append((entry.path, m))
    verdicts: list[tuple[str, str, str]] = []
    fmt = qemuimg.format_from_extension(f"x.{site.imagetype}")
    for path, m in candidates:
        real = os.path.realpath(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        why = _why_dead(site, m["short"], int(m["imageid"]), int(m["rev"]))
        if real in kept_disks:
            # in use by a kept (maybe running) domain: not read, so its image lock is never broken
            plan.kept.append((path, "live" if why is None else "disk of a kept domain"))
            continue
        try:
            # the format is the vmprofile's (never probed); the lock is respected: a file a
            # running process writes fails here and is kept
            inf = qemuimg.info(path, fmt) if fmt else None
            backing = inf.full_backing_filename or inf.backing_filename if inf else None
        except PermanentError:
            inf, backing = None, None
        if backing:
            backing_in_use.add(os.path.realpath(os.path.join(os.path.dirname(path), backing)))
        if why is None:
            plan.kept.append((path, "live"))
        elif m["short"] in site.shared:
            plan.kept.append((path, SHARED))
        elif stem in site.master_stems:
            plan.kept.append((path, "named like a master image"))
        elif inf is None:
            plan.kept.append((path, f"not readable as {fmt} (in use, or not an image)"))
        elif not backing:
            plan.kept.append((path, "no backing file: not an overlay"))
        else:
            verdicts.append((path, m["short"], why))
    for path, short, why in verdicts:
        if os.path.realpath(path) in backing_in_use:
            plan.kept.append((path, "backing file of another file"))
            continue
        plan.orphans.append(Orphan(OrphanKind.OVERLAY, path, short, why, _ids(site, short)))
    _plan_snapshots(plan, site, vmpath)
    return plan


def _plan_snapshots(plan: ReapPlan, site: HostInventory, vmpath: str) -> None:
    """Boot snapshot files (worker.hypervisors.boot_snapshot) live and die with their (computer,
    revision): kept while it is live, removed otherwise. Never a domain's disk (a restore copies
    the saved disk), so no libvirt or qemu-img check is needed; the manifest sorts (and goes) first."""
    pattern = snapshot_file_re(site.imagetype)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        entries = [e for e in os.scandir(vmpath) if e.is_file(follow_symlinks=False)]
        for entry in sorted(entries, key=lambda e: (not e.name.endswith(".json"), e.name)):
            m = pattern.match(entry.name)
            if m is None or m["short"] not in site.computers:
                continue
            why = _why_dead(site, m["short"], int(m["imageid"]), int(m["rev"]))
            if why is None:
                plan.kept.append((entry.path, "live boot snapshot"))
            elif m["short"] in site.shared:
                plan.kept.append((entry.path, SHARED))
            else:
                plan.orphans.append(
                    Orphan(OrphanKind.SNAPSHOT, entry.path, m["short"], why, _ids(site, m["short"]))
                )


Replan = Callable[[], ReapPlan]
LockFor = Callable[[Sequence[int]], contextlib.AbstractContextManager[object]]


def _still_orphan(o: Orphan, replan: Replan) -> bool:
    return any(x.kind == o.kind and x.name == o.name for x in replan().orphans)


def _remove(o: Orphan, host: LibvirtHost) -> bool:
    if o.kind == OrphanKind.DOMAIN:
        g = host.lookup_guest(o.name)
        if g is None:
            return False
        g.power_off()
        g.undefine()
        return True
    try:
        os.unlink(o.name)
    except FileNotFoundError:
        return False
    return True


def apply_plan(plan: ReapPlan, host: LibvirtHost, replan: Replan, lock_for: LockFor) -> list[str]:
    """Remove the plan's orphans, domains first, then the overlays of a fresh plan (a running orphan
    domain's overlay is readable only once the domain is gone). Each item is removed under its
    computer's lock and only when ``replan()`` under that lock still calls it an orphan; an item whose
    computer is busy, or that became live, is kept (with the reason). Returns what was removed."""
    removed: list[str] = []

    def attempt(o: Orphan) -> None:
        try:
            with lock_for(o.computer_ids) as held:
                if not _still_orphan(o, replan):
                    plan.kept.append((o.name, RECHECKED_LIVE))
                elif _holding(held) and _remove(o, host):
                    removed.append(o.name)
        except ProvisioningError as exc:  # ComputerBusyError: a task holds the computer
            plan.kept.append((o.name, f"{NOT_REMOVED} {exc}"))

    for o in plan.domains:
        attempt(o)
    overlays = replan().overlays if plan.domains else plan.overlays
    for o in overlays:
        attempt(o)
    for o in plan.snapshots:
        attempt(o)
    plan.orphans = [o for o in (*plan.domains, *overlays, *plan.snapshots) if o.name in removed]
    return removed


def _holding(held: object) -> bool:
    """True; LockLostError (a ProvisioningError: the item is kept) when a lease of ``held`` was lost."""
    for lock in held if isinstance(held, list) else ():
        if isinstance(lock, HeldLock):
            lock.check()
    return True


@contextlib.contextmanager
def computer_locks(client: object, ids: Sequence[int], *, lease: int = REAP_LOCK_LEASE) -> Iterator[object]:
    """Every lock of ``ids`` (sorted: two reapers never wait on each other crosswise), each a lease
    renewed while the reaper works; yields the list of :class:`HeldLock`."""
    with contextlib.ExitStack() as stack:
        held = [
            stack.enter_context(
                computer_lock(client, cid, ttl=REAP_LOCK_TTL, wait=REAP_LOCK_WAIT, lease=lease)
            )
            for cid in sorted(set(ids))
        ]
        yield held


def _short(name: str) -> str:
    return name.strip().lower().rstrip(".").split(".", 1)[0]


def this_host_names(aliases: str = "") -> set[str]:
    """This machine's names as the reaper compares them (short, lowercase), plus ``aliases``."""
    names = {socket.gethostname(), socket.getfqdn(), *aliases.split(",")}
    return {_short(n) for n in names if n.strip()}


def check_this_host(vmhost: str, host: LibvirtHost, aliases: str = "") -> None:
    """InvalidInputError unless ``vmhost`` names this machine and libvirt runs on it."""
    mine = this_host_names(aliases)
    if _short(vmhost) not in mine:
        raise InvalidInputError(
            f"--vmhost {vmhost!r} is not this host ({', '.join(sorted(mine))}); run reap --apply on the "
            "VM host itself (or list its VCL name in VCL_HOST_ALIASES)"
        )
    libvirt_name = host.call("getHostname", lambda c: str(c.getHostname()))
    if _short(libvirt_name) not in this_host_names():
        raise InvalidInputError(
            f"libvirt ({host.uri}) runs on {libvirt_name!r}, not on this host; "
            "reap --apply removes local files"
        )


def format_plan(plan: ReapPlan, *, applied: bool) -> Iterable[str]:
    verb = "removed" if applied else "would remove"
    yield f"vmhost {plan.vmhost} (vmhost.id {plan.vmhost_id}), vmpath {plan.vmpath}"
    for o in plan.orphans:
        yield f"{verb} {o.kind} {o.name} ({o.reason})"
    for name, why in plan.kept:
        if applied and (why == RECHECKED_LIVE or why.startswith(NOT_REMOVED)):
            yield f"kept {name} ({why})"
    yield (
        f"{len(plan.domains)} orphan domain(s), {len(plan.overlays)} orphan overlay(s), "
        f"{len(plan.snapshots)} orphan boot snapshot file(s), {len(plan.kept)} kept"
        + ("" if applied or not plan.orphans else "; run with --apply to remove them")
    )


def run_reap(store: VclStore, settings: Settings, kv: Any, *, apply: bool, vmhost: str | None = None) -> int:
    """CLI entry: 0 on success, 2 when the VM host cannot be determined or is not this host.
    ``kv``: the Redis of the computer locks (taken only with ``apply``)."""
    name = vmhost or settings.vmhost
    if not name:
        print("vcl-worker reap: give --vmhost NAME or set VCL_VMHOST", flush=True)
        return 2
    host = get_host(settings.libvirt_uri)
    roots = settings.roots
    try:
        if apply:
            check_this_host(name, host, settings.host_aliases)
        plan = plan_reap(store, host, name, roots)
    except (UnknownVMHostError, InvalidInputError) as exc:
        print(f"vcl-worker reap: {exc}", flush=True)
        return 2
    if apply:
        apply_plan(
            plan,
            host,
            lambda: plan_reap(store, host, name, roots),
            lambda ids: computer_locks(kv, ids),
        )
    for line in format_plan(plan, applied=apply):
        print(line, flush=True)
    return 0


__all__ = [
    "Orphan",
    "OrphanKind",
    "ReapPlan",
    "apply_plan",
    "check_this_host",
    "computer_locks",
    "format_plan",
    "plan_reap",
    "run_reap",
    "this_host_names",
]
