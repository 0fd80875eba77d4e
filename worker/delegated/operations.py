"""One provisioning call from vcld, run on the VM host's worker: :func:`run_call`.

Each method does what libvirt.pm's subroutine of the same name does, through the provisioning core,
for the reservation read from the VCL database. Results are what vcld expects (see
:mod:`.methods`). Request and computer *states* are never written: vcld's state modules own them.
Transient errors (libvirt connection, database, a busy computer) propagate to the Celery task, which
answers them as failures (``vcl.call`` is never retried: vcld waits a bounded time); permanent ones
become ``ok: false`` with the error text, which vcld logs and acts on.

**Deadline.** vcld waits a bounded time (the CLI's timeout); the CLI sends that moment as
``deadline`` (epoch seconds). A call run after it answers ``expired`` and changes nothing: checked
before acting, and again once the computer's lock is held (the wait for the lock never outlasts the
deadline). **Host**: a computer not on this worker's VM host raises WrongHostError before any lock or
libvirt call (the task re-routes it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from worker.db.errors import VclDataError
from worker.db.store import VclStore
from worker.delegated.methods import BY_METHOD, Method, Returns
from worker.hypervisors.errors import DomainNotFoundError, PermanentError
from worker.hypervisors.guest import PowerState
from worker.hypervisors.provisioner import LibvirtProvisioner, ProgressEvent
from worker.reservation import Reservation
from worker.tasks.claimed import hold_computer, provisioner_for
from worker.tasks.deps import TaskDeps
from worker.tasks.host_check import check_host
from worker.tasks.locks import ComputerBusyError, delivery_token
from worker.timing import Stopwatch

log = logging.getLogger(__name__)

#: The computerloadlog rows libvirt.pm:load inserts itself (vcld's new.pm writes the others).
LIBVIRT_LOAD_ROWS = ("startload", "transfervm", "vmsetupconfig", "startvm")
#: Value returned with ``ok: false``, per result kind (vcld treats 0/undef as failure).
_FAILED: dict[Returns, int | str | None] = {
    Returns.BOOL: 0,
    Returns.STATUS: None,
    Returns.MB: 0,
    Returns.POWER: None,
}

Value = int | str | None
ProgressHook = Callable[[str, str], None]


@dataclass(frozen=True, kw_only=True)
class CallResult:
    method: str
    reservation_id: int
    ok: bool
    result: Value
    error: str = ""
    detail: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    master_copied: bool | None = None  # load: the master was copied from the repository by this call

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.master_copied is None else {"master_copied": self.master_copied}
        return {
            **extra,
            "method": self.method,
            "reservation_id": self.reservation_id,
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
            "detail": self.detail,
            "timings": dict(self.timings),
        }


@dataclass(kw_only=True)
class _Call:
    """What one method needs: the reservation, its provisioner, the store, the extra arguments."""

    r: Reservation
    p: LibvirtProvisioner
    store: VclStore
    args: Sequence[str]
    progress: ProgressHook | None
    # The run's stopwatch timings: the core's steps (core_*), the lock's, the total.
    timings: dict[str, float]
    detail: str = ""
    master_copied: bool | None = None

    def arg(self, i: int) -> str | None:
        return self.args[i] if len(self.args) > i and self.args[i] else None


def _initialize(c: _Call) -> Value:
    c.p.initialize()
    return 1


def _node_status(c: _Call) -> Value:
    return c.p.node_status().value


def _does_image_exist(c: _Call) -> Value:
    name = c.arg(0)
    exists = c.p.layout.image_exists(name)
    if name is None and c.r.request_state in ("image", "checkpoint"):
        # image.pm needs 0 before a capture; the master is written under the new name, which must
        # not exist either (capture refuses to overwrite it).
        exists = exists or c.p.layout.image_exists(c.p.get_new_image_name())
    return int(exists)


def _load(c: _Call) -> Value:
    r = c.r

    def on_progress(event: ProgressEvent) -> None:
        if event.stage in LIBVIRT_LOAD_ROWS:
            c.store.insert_loadlog(r.reservation_id, r.computer_id, event.stage, event.message)
        if c.progress is not None and event.percent is None:
            c.progress(event.stage, event.message)

    c.p.initialize()
    # No post-load of the worker's: vcld's OS module runs post_load() once this returns (libvirt.pm's
    # load ends with it), logged in with vcld's own identity; the guest must still answer.
    result = c.p.load(progress=on_progress, post_load=False)
    if result.generated_macs:  # eth<n>generated profiles: capture and power calls find the domain by them
        c.store.record_generated_macs(r, result.generated_macs.eth0, result.generated_macs.eth1)
    c.master_copied = result.master_copied
    c.timings.update({f"core_{k}": v for k, v in result.timings.items()})
    c.detail = f"domain {result.domain_name} ({result.domain_type}) on {result.cow_path}"
    if result.answer is not None:
        c.detail += f"; {result.answer.address}:{result.answer.port} answered {result.answer.banner}".rstrip()
    return 1


def _capture(c: _Call) -> Value:
    c.p.initialize()
    # The bridge has vcld's OS module shut the guest down first (libvirt.pm: os->shutdown()); the
    # core's ACPI shutdown then finds it off. Only without an OS module, or when it failed, does the
    # core shut the guest down.
    already_off = c.p.guest().power_status() == PowerState.OFF
    result = c.p.capture(progress=None)
    c.store.rename_captured_image(c.r, result.new_image_name, c.p.layout.datastore_imagetype)
    # libvirt.pm deletes the domain at the end of capture (image state); the core leaves that to
    # the caller, after the new name is recorded.
    c.p.remove_captured_domain(result.domain_name)
    c.timings.update({f"core_{k}": v for k, v in result.timings.items()})
    c.detail = f"captured {result.domain_name} as {result.master_path}; " + (
        "it was off already" if already_off else "the worker shut it down"
    )
    return 1


def _get_image_size(c: _Call) -> Value:
    name = c.arg(0)
    size = c.p.get_image_size(name)
    if size == 0 and name is not None:
        # image.pm passes the name it read before capture renamed the revision: use the current one.
        size = c.p.get_image_size(None)
    return size


def _power_status(c: _Call) -> Value:
    try:
        return c.p.guest().power_status()
    except DomainNotFoundError:
        return None  # libvirt.pm: undef when the domain is not defined


def _power_on(c: _Call) -> Value:
    c.p.guest().start()
    return 1


def _power_off(c: _Call) -> Value:
    c.p.guest().power_off()
    return 1


def _power_reset(c: _Call) -> Value:
    guest = c.p.guest()
    guest.power_off()
    guest.start()
    return 1


def _unload(c: _Call) -> Value:
    removed = c.p.post_maintenance_action()
    c.detail = f"removed domains: {', '.join(removed) or 'none'}"
    return 1


def _post_maintenance_action(c: _Call) -> Value:
    _unload(c)
    if not c.store.detach_computer(c.r.computer_id):
        log.warning("computer %s: no 'noimage' imagerevision; only vmhostid cleared", c.r.computer_id)
        c.detail += "; no 'noimage' revision, current image unchanged"
    return 1


OPERATIONS: dict[str, Callable[[_Call], Value]] = {
    "initialize": _initialize,
    "node_status": _node_status,
    "does_image_exist": _does_image_exist,
    "retrieve_image": _does_image_exist,  # no partner-node copies: available means present
    "load": _load,
    "capture": _capture,
    "get_image_size": _get_image_size,
    "power_status": _power_status,
    "power_on": _power_on,
    "power_off": _power_off,
    "power_reset": _power_reset,
    "unload": _unload,
    "post_maintenance_action": _post_maintenance_action,
}


def _locked_if_needed(
    spec: Method,
    deps: TaskDeps,
    r: Reservation,
    timings: dict[str, float],
    owner: str | None,
    *,
    wait: float | None = None,
) -> AbstractContextManager[object]:
    """A method that changes the domain or disks holds the computer's lock, the one the flows hold
    (``lock_wait``/``locked_at``/``unlocked_at`` in its timings), under this delivery's own token and
    with the flows' heartbeat lease (a call whose child dies frees the computer within one lease).
    ``wait``: how long to wait for it (default ``VCL_LOCK_WAIT``)."""
    if not spec.locked:
        return contextlib.nullcontext()
    return hold_computer(
        deps, r.computer_id, timings, owner=delivery_token(owner), lease=deps.settings.lock_lease, wait=wait
    )


def refused(method: str, reservation_id: int, error: str, *, detail: str = "") -> CallResult:
    """The answer of a call that did nothing: ``ok: false`` with the method's failed value."""
    spec = BY_METHOD.get(method)
    failed = _FAILED[spec.returns] if spec is not None else None
    return CallResult(
        method=method, reservation_id=reservation_id, ok=False, result=failed, error=error, detail=detail
    )


def expired(method: str, reservation_id: int, deadline: float, now: float) -> CallResult:
    """The answer of a call whose caller's deadline has passed: nothing was changed."""
    log.warning(
        "%s for reservation %s refused: %.1f s past its deadline", method, reservation_id, now - deadline
    )
    return refused(
        method, reservation_id,
        f"expired: the caller stopped waiting {now - deadline:.1f} s ago; nothing was done", detail="expired",
    )  # fmt: skip


def run_call(
    method: str,
    reservation_id: int,
    args: Sequence[str] = (),
    *,
    deps: TaskDeps,
    owner: str | None = None,
    progress: ProgressHook | None = None,
    deadline: float | None = None,
) -> CallResult:
    """Run ``method`` for ``reservation_id``; see the module doc for errors, results and
    ``deadline`` (epoch seconds; None: no deadline)."""
    spec = BY_METHOD.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(sorted(BY_METHOD))}")
    stopwatch = Stopwatch()
    failed = _FAILED[spec.returns]
    try:
        r = deps.store.load_reservation(reservation_id)
        check_host(deps, r)  # before the provisioner is even built
        call = _Call(
            r=r, p=provisioner_for(r, deps.settings), store=deps.store, args=tuple(args), progress=progress,
            timings=stopwatch.timings,
        )  # fmt: skip
    except (VclDataError, PermanentError) as exc:
        return CallResult(
            method=method, reservation_id=reservation_id, ok=False, result=failed,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
    wait = None
    if deadline is not None:
        if deps.clock() >= deadline:
            return expired(method, reservation_id, deadline, deps.clock())
        wait = min(float(deps.settings.lock_wait), deadline - deps.clock())  # never past the deadline
    # A wait the deadline cut short that ends without the lock: the caller has stopped waiting.
    until_deadline = wait is not None and wait < deps.settings.lock_wait
    try:
        with _locked_if_needed(spec, deps, r, call.timings, owner, wait=wait):
            if deadline is not None and deps.clock() >= deadline:
                # It waited for the computer past the deadline: whoever uses the computer now is
                # not the one vcld asked about.
                return expired(method, reservation_id, deadline, deps.clock())
            value = OPERATIONS[method](call)
    except ComputerBusyError:
        if deadline is not None and (until_deadline or deps.clock() >= deadline):
            return expired(method, reservation_id, deadline, max(deadline, deps.clock()))
        raise
    except (PermanentError, VclDataError) as exc:
        log.warning("%s for reservation %s failed: %s", method, reservation_id, exc)
        return CallResult(
            method=method, reservation_id=reservation_id, ok=False, result=failed,
            error=f"{type(exc).__name__}: {exc}", detail=call.detail, timings=stopwatch.total(),
        )  # fmt: skip
    return CallResult(
        method=method, reservation_id=reservation_id, ok=True, result=value, detail=call.detail,
        timings=stopwatch.total(), master_copied=call.master_copied,
    )  # fmt: skip


__all__ = ["LIBVIRT_LOAD_ROWS", "OPERATIONS", "CallResult", "expired", "refused", "run_call"]
