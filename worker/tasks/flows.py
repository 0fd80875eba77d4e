"""What each Celery task does, as vcld does it: claim, load the reservation, call the core, record.

These functions hold the *order of state transitions* only; provisioning lives in
``worker.hypervisors`` and SQL in ``worker.db``. They talk to Celery through the small
:class:`TaskHooks` protocol, so the same flow runs in a prefork worker, the embedded demo and tests.

Idempotency: every flow may be delivered twice (late ack + redelivery after a crash). The claim
returns RESUMED for a request this worker already moved to ``pending``; inside the per-computer
lock the request state is read again. A load is skipped only in two cases (see :func:`_skip_reason`):
vcld's shortcut (a ``new`` request on an ``available`` computer whose guest already answers with
this revision), or this very task (same Celery task id) already finished the load before it died.
A ``reload`` always rebuilds the disk from the master: the previous user's disk never survives it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker import wiring as runtime
from worker.actions import BY_NAME
from worker.config import Settings
from worker.db.errors import VclDataError
from worker.db.requests import ClaimOutcome
from worker.db.store import VclStore
from worker.failpoints import failpoint
from worker.hypervisors.errors import PermanentError, TransientError
from worker.hypervisors.provisioner import LibvirtProvisioner, NodeStatus, ProgressEvent
from worker.reservation import Reservation

from .locks import computer_lock, release_if_owner

log = logging.getLogger(__name__)

# VCL computerloadlog stages the core reports, with the percentage shown while waiting.
LOAD_STAGE_PERCENT = {
    "startload": 5.0,
    "transfervm": 50.0,
    "vmsetupconfig": 70.0,
    "startvm": 75.0,
    "machinebooted": 97.0,
}
# Marks "this task delivery finished the core load": a redelivery of the same task id may skip it.
_LOAD_DONE_KEY = "vcl:load-done:{}"
# A master copy from the repository runs between startload and transfervm.
COPY_SPAN = (5.0, 50.0)


class TaskHooks(Protocol):
    """The two things a flow needs from its task: progress reporting and the retry decision."""

    def progress(self, stage: str, percent: float, message: str = "") -> None: ...

    def may_retry(self) -> bool: ...

    @property
    def owner(self) -> str | None:
        """Identity of this unit of work (the Celery task id), kept across redeliveries."""
        ...


class ReservationFailed(Exception):
    """The reservation failed permanently; its request/computer states were already recorded."""


class AlreadyHandled(Exception):
    """The request is no longer ours to process (another task finished or took it)."""


@dataclass
class Summary:
    """The task result: a small JSON-able record of what happened."""

    action: str
    reservation_id: int
    request_id: int | None = None
    status: str = "done"
    computer: str | None = None
    vmhost: str | None = None
    domain: str | None = None
    disks: dict[str, str] = field(default_factory=dict)
    request_state: str | None = None
    detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # True when this load copied the master from the repository (image distribution).
    master_copied: bool = False
    # How the user reaches the guest: address, the port that answered, its banner, the domain type.
    address: str | None = None
    port: int | None = None
    banner: str | None = None
    domain_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - t0, 3)

    def total(self) -> float:
        return round(time.monotonic() - self._start, 3)


def _claim(
    store: VclStore, reservation_id: int, from_state: str, owner: str | None
) -> tuple[int, ClaimOutcome]:
    """Claim the request for this task (the dispatcher usually did: RESUMED); a claim that names
    another task (the sweep re-enqueued the request) is not ours."""
    found = store.reservation_request(reservation_id)
    if found is None:
        raise ReservationFailed(f"reservation {reservation_id} does not exist")
    request_id, state, laststate = found
    if owner is None:
        outcome = store.claim_request(request_id, from_state)
    else:
        outcome = store.claim_for_task(request_id, reservation_id, from_state, owner)
    if outcome is ClaimOutcome.LOST:
        if owner is not None:
            _release_left_lock(store, reservation_id, owner)
        raise AlreadyHandled(
            f"request {request_id} is {state}/{laststate}, not {from_state} for task {owner}: nothing to do"
        )
    return request_id, outcome


def _release_left_lock(store: VclStore, reservation_id: int, owner: str) -> None:
    """An earlier delivery of this task may have died inside the computer lock after recording its
    work: give the lock back now instead of leaving the computer locked for a lease."""
    try:
        computer_id = store.load_reservation(reservation_id).computer_id
        if release_if_owner(runtime.lock_redis(), computer_id, owner):
            log.info("reservation %s: released the lock an earlier delivery left", reservation_id)
    except Exception as exc:  # best effort: the lease ends the lock anyway
        log.debug("reservation %s: left lock not checked: %s", reservation_id, exc)


def _still_ours(store: VclStore, work: _Work, owner: str | None) -> None:
    """Inside the computer lock: the request is still claimed, and by this task."""
    states = store.request_states(work.request_id)
    if states != ("pending", work.from_state):
        raise AlreadyHandled(f"request {work.request_id} is {states}; another task handled it")
    if owner is not None and not store.owns_claim(work.reservation.reservation_id, owner):
        raise AlreadyHandled(f"request {work.request_id} was handed to another task by the sweep")


def _load_reservation(store: VclStore, reservation_id: int, request_id: int, action: str) -> Reservation:
    try:
        return store.load_reservation(reservation_id)
    except VclDataError as exc:
        # Bad data in the VCL database: fail the request the way vcld's reservation_failed does.
        store.fail_request(request_id, reservation_id, f"{action}: {exc}")
        raise ReservationFailed(str(exc)) from exc


def _make_provisioner(store: VclStore, r: Reservation, settings: Settings, action: str) -> LibvirtProvisioner:
    """The core validates names, paths and MACs on construction: bad data fails the request
    (vcld's initialize → reservation_failed) instead of leaving it pending forever."""
    try:
        return LibvirtProvisioner(r, settings)
    except PermanentError as exc:
        store.fail_request(r.request_id, r.reservation_id, f"{action}: {type(exc).__name__}: {exc}")
        raise ReservationFailed(f"{type(exc).__name__}: {exc}") from exc


def _progress_adapter(
    hooks: TaskHooks, store: VclStore, r: Reservation, span: tuple[float, float], record: bool
) -> Callable[[ProgressEvent], None]:
    last = {"percent": -1.0, "at": 0.0}

    def on_progress(event: ProgressEvent) -> None:
        if event.stage in LOAD_STAGE_PERCENT:
            if record:
                store.insert_loadlog(r.reservation_id, r.computer_id, event.stage, event.message)
            hooks.progress(event.stage, LOAD_STAGE_PERCENT[event.stage], event.message)
            return
        if event.percent is None:
            hooks.progress(event.stage, span[0], event.message)
            return
        # qemu-img reports often; forward at most every 1 % or 0.5 s.
        now = time.monotonic()
        if event.percent - last["percent"] < 1.0 and now - last["at"] < 0.5 and event.percent < 100:
            return
        last["percent"], last["at"] = event.percent, now
        lo, hi = span
        hooks.progress(event.stage, lo + (hi - lo) * event.percent / 100.0, event.message)

    return on_progress


def _retry_or_fail(hooks: TaskHooks, exc: TransientError, fail: Callable[[str], None]) -> None:
    """Let the task retry a transient error; on the last attempt record the failure instead."""
    if hooks.may_retry():
        raise exc
    fail(f"gave up after retries: {exc}")
    raise ReservationFailed(str(exc)) from exc


@contextmanager
def _locked(computer_id: int, summary: Summary, owner: str | None) -> Iterator[None]:
    """The per-computer lock, recording how long the task waited for it."""
    settings = runtime.settings()
    t0 = time.monotonic()
    with computer_lock(
        runtime.lock_redis(),
        computer_id,
        ttl=settings.computer_lock_ttl,
        wait=settings.lock_wait,
        owner=owner,
        lease=settings.lock_lease,
    ):
        summary.timings["lock_wait"] = round(time.monotonic() - t0, 3)
        # Wall-clock bounds of the exclusive section: lets operators (and tests) check that two
        # tasks for one computer never overlapped.
        summary.timings["locked_at"] = time.time()
        try:
            yield
        finally:
            summary.timings["unlocked_at"] = time.time()


@dataclass
class _Work:
    """One delivery of a task: the claimed request, the loaded reservation, what to report."""

    store: VclStore
    settings: Settings
    summary: Summary
    clock: _Stopwatch
    request_id: int
    outcome: ClaimOutcome
    reservation: Reservation
    from_state: str


def _begin(hooks: TaskHooks, reservation_id: int, action: str) -> _Work:
    """Claim the request (vcld: state → pending) and load the reservation it is about."""
    store, settings = runtime.store(), runtime.settings()
    from_state = BY_NAME[action].from_state
    summary = Summary(action=action, reservation_id=reservation_id)
    clock = _Stopwatch()
    request_id, outcome = _claim(store, reservation_id, from_state, hooks.owner)
    failpoint(f"{action}.claimed")
    summary.request_id = request_id
    hooks.progress("claimed", 1.0, outcome.value)
    r = _load_reservation(store, reservation_id, request_id, action)
    summary.computer, summary.vmhost = r.computer_short_name, r.vmhost_short_name
    return _Work(store, settings, summary, clock, request_id, outcome, r, from_state)


def _end(work: _Work, hooks: TaskHooks, last_stage: str) -> dict[str, Any]:
    states = work.store.request_states(work.request_id)
    work.summary.request_state = states[0] if states else None
    work.summary.timings["total"] = work.clock.total()
    hooks.progress(last_stage, 100.0)
    return work.summary.as_dict()


@contextmanager
def _failing_reservation(hooks: TaskHooks, fail: Callable[[str], None]) -> Iterator[None]:
    """Map the core's errors onto vcld's outcomes: transient → retry (then fail), others → fail."""
    try:
        yield
    except TransientError as exc:
        _retry_or_fail(hooks, exc, fail)
    except PermanentError as exc:
        fail(f"{type(exc).__name__}: {exc}")
        raise ReservationFailed(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        # A soft time limit or a bug: the reservation still fails the way vcld fails it.
        fail(f"unexpected {type(exc).__name__}: {exc}")
        raise


def _skip_reason(work: _Work, provisioner: LibvirtProvisioner, computer_state: str, owner: str | None) -> str:
    """Why this delivery may skip the core load, or "" when it must (re)build the disk."""
    if owner is not None and runtime.lock_redis().get(_LOAD_DONE_KEY.format(owner)) is not None:
        return "this task already completed the load before it was redelivered"
    # vcld's shortcut (new.pm: node_status READY): only for a new reservation on an available
    # computer, i.e. one a reload left clean and nobody has used since. Never for a reload.
    if (
        work.from_state == "new"
        and computer_state == "available"
        and provisioner.node_status() is NodeStatus.READY
    ):
        return "computer available and already answering with this revision; load skipped"
    return ""


def _mark_load_done(owner: str | None, ttl: int) -> None:
    if owner is not None:
        runtime.lock_redis().set(_LOAD_DONE_KEY.format(owner), "1", ex=ttl)


def run_load(hooks: TaskHooks, reservation_id: int, action: str = "load") -> dict[str, Any]:
    """``new``/``reload``: vcld's new.pm → reload_image → libvirt load (reference 3.4)."""
    work = _begin(hooks, reservation_id, action)
    store, r, summary = work.store, work.reservation, work.summary
    with _locked(r.computer_id, summary, hooks.owner):
        _still_ours(store, work, hooks.owner)
        provisioner = _make_provisioner(store, r, work.settings, action)
        computer_state = store.computer_state(r.computer_id)
        store.start_load(r)
        failpoint(f"{action}.started")
        with _failing_reservation(hooks, lambda msg: store.fail_load(r, msg)):
            provisioner.initialize()
            skip = _skip_reason(work, provisioner, computer_state, hooks.owner)
            if skip:
                summary.detail = skip
                summary.domain = provisioner.get_domain_name()
            else:
                with work.clock.phase("load"):
                    result = provisioner.load(
                        progress=_progress_adapter(hooks, store, r, COPY_SPAN, record=True)
                    )
                failpoint(f"{action}.loaded")
                _mark_load_done(hooks.owner, work.settings.computer_lock_ttl)
                summary.domain = result.domain_name
                summary.domain_type = result.domain_type
                summary.disks = {"cow": result.cow_path, "master": result.master_path}
                summary.master_copied = result.master_copied
                summary.timings.update({f"core_{k}": v for k, v in result.timings.items()})
                if result.answer is not None:
                    summary.address, summary.port = result.answer.address, result.answer.port
                    summary.banner = result.answer.banner
        failpoint(f"{action}.before_finish")
        store.finish_load(r)
        failpoint(f"{action}.finished")
    return _end(work, hooks, "loadimagecomplete")


def run_capture(hooks: TaskHooks, reservation_id: int) -> dict[str, Any]:
    """``image``: see :mod:`worker.tasks.capture_flow` (kept here for callers of the flows API)."""
    from .capture_flow import run_capture as capture_flow

    return capture_flow(hooks, reservation_id)


def run_maintenance(hooks: TaskHooks, reservation_id: int) -> dict[str, Any]:
    """``tomaintenance``: new.pm → post_maintenance_action → computer maintenance, vmhostid NULL."""
    work = _begin(hooks, reservation_id, "maintenance")
    store, r, summary = work.store, work.reservation, work.summary
    with _locked(r.computer_id, summary, hooks.owner):
        _still_ours(store, work, hooks.owner)
        provisioner = _make_provisioner(store, r, work.settings, "maintenance")
        failure = ""
        try:
            provisioner.initialize()
            with work.clock.phase("unload"):
                removed = provisioner.post_maintenance_action()
            summary.detail = f"removed domains: {', '.join(removed) or 'none'}"
        except TransientError as exc:
            if hooks.may_retry():
                raise
            failure = f"post_maintenance_action failed: {exc}"
        except PermanentError as exc:
            # vcld logs this as CRITICAL and still puts the computer in maintenance (new.pm 4).
            failure = f"post_maintenance_action failed: {type(exc).__name__}: {exc}"
        if failure:
            summary.detail = failure
            store.insert_loadlog(r.reservation_id, r.computer_id, "failed", failure)
        store.finish_maintenance(r)
    return _end(work, hooks, "complete")
