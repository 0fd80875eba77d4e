"""Claimed work: the sequence every reservation task runs, once, as :func:`claimed_work`.

vcld's order, the same for load, reload, capture and maintenance:

1. claim the request for this task (vcld: state → ``pending``) or confirm that the dispatcher's claim
   names this task; a claim naming another task is not ours (:class:`AlreadyHandled`: stand down);
2. read the reservation (bad data fails the request, as vcld's ``reservation_failed``); a computer
   that is not on this worker's VM host is refused (:mod:`.host_check`: the task re-routes it);
3. hold the computer's lock under this delivery's own token (a lost lease stops the flow at its
   next :meth:`ClaimedWork.still_ours`), recording ``lock_wait`` and the exclusive section's
   wall-clock bounds;
4. inside it, check the claim is still ours and build the provisioner (bad names fail the request);
5. the flow's own steps, with :meth:`ClaimedWork.failing` mapping the core's errors onto the
   reservation's outcome (transient → retry, then fail on the last attempt; permanent → fail) and
   :meth:`ClaimedWork.still_ours` before any further destructive step;
6. :meth:`ClaimedWork.finish`: the summary the task returns.

Idempotency: every flow may be delivered twice (late ack + redelivery after a crash). The claim
returns RESUMED for a request this task already moved to ``pending``; inside the per-computer lock the
request state is read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from worker.actions import BY_NAME
from worker.config import Settings
from worker.db.errors import VclDataError
from worker.db.requests import ClaimOutcome
from worker.db.store import VclStore
from worker.failpoints import failpoint
from worker.hypervisors.errors import PermanentError, TransientError
from worker.hypervisors.provisioner import LibvirtProvisioner, ProgressEvent
from worker.reservation import Reservation
from worker.timing import Stopwatch

from .deps import TaskDeps
from .host_check import check_host
from .locks import HeldLock, computer_lock, delivery_token
from .outcomes import EXPECTED_FAILURES, AlreadyHandled, RequestDeleted, ReservationFailed, Summary

log = logging.getLogger(__name__)

# VCL computerloadlog stages the core reports, with the percentage shown while waiting.
LOAD_STAGE_PERCENT = {
    "startload": 5.0,
    "transfervm": 50.0,
    "vmsetupconfig": 70.0,
    "startvm": 75.0,
    "machinebooted": 97.0,
}
# qemu-img reports often: a progress update is forwarded at most every PROGRESS_STEP % or PROGRESS_PAUSE s.
PROGRESS_STEP = 1.0
PROGRESS_PAUSE = 0.5

Fail = Callable[[str], None]


class TaskHooks(Protocol):
    """The two things a flow needs from its task: progress reporting and the retry decision."""

    def progress(self, stage: str, percent: float, message: str = "") -> None: ...

    def may_retry(self) -> bool: ...

    @property
    def owner(self) -> str | None:
        """Identity of this unit of work (the Celery task id), kept across redeliveries."""
        ...


def provisioner_for(r: Reservation, settings: Settings) -> LibvirtProvisioner:
    """The core for ``r``; it validates names, paths and MACs on construction (PermanentError)."""
    return LibvirtProvisioner(r, settings=settings)


@contextmanager
def hold_computer(
    deps: TaskDeps,
    computer_id: int,
    timings: dict[str, float],
    *,
    owner: str | None,
    lease: int | None,
    wait: float | None = None,
) -> Iterator[HeldLock]:
    """The per-computer lock every task holds while it changes the computer's domain or disks.

    Records how long the task waited for it (``lock_wait``) and the wall-clock bounds of the exclusive
    section (``locked_at``/``unlocked_at``): operators (and tests) check with them that two tasks for
    one computer never overlapped. ``owner``: this delivery's token (:func:`~.locks.delivery_token`);
    ``lease``: see :func:`~worker.tasks.locks.computer_lock`; ``wait``: at most this long (default
    ``VCL_LOCK_WAIT``)."""
    settings = deps.settings
    waiting = Stopwatch()
    with computer_lock(
        deps.kv,
        computer_id,
        ttl=settings.computer_lock_ttl,
        wait=settings.lock_wait if wait is None else wait,
        owner=owner,
        lease=lease,
    ) as held:
        timings["lock_wait"] = waiting.elapsed()
        timings["locked_at"] = deps.clock()
        try:
            yield held
        finally:
            timings["unlocked_at"] = deps.clock()


@dataclass
class ClaimedWork:
    """One delivery of a task inside the computer's lock: the claimed request, its reservation, the
    provisioner built for it and the summary being filled in."""

    deps: TaskDeps
    hooks: TaskHooks
    from_state: str
    request_id: int
    outcome: ClaimOutcome
    reservation: Reservation
    provisioner: LibvirtProvisioner
    summary: Summary
    stopwatch: Stopwatch
    # The computer lock this delivery holds: a lost lease stops the flow at its next still_ours().
    held: HeldLock | None = None

    @property
    def store(self) -> VclStore:
        return self.deps.store

    @property
    def settings(self) -> Settings:
        return self.deps.settings

    @property
    def owner(self) -> str | None:
        return self.hooks.owner

    def still_ours(self) -> None:
        """AlreadyHandled unless the request is still claimed, and by this task (call it outside
        :meth:`failing`: standing down is not a failure). A lost computer lock raises LockLostError
        first: a transient error, so Celery retries the task, which takes the lock again (after
        whoever holds it now) and re-checks the claim. Retry rather than stand down: the request is
        still claimed by this task and nobody else would finish it before the sweep's grace."""
        if self.held is not None:
            self.held.check()
        _check_still_ours(
            self.store, self.reservation.reservation_id, self.request_id, self.from_state, self.owner
        )

    def may_retry(self) -> bool:
        return self.hooks.may_retry()

    def retry_or_fail(self, exc: TransientError, fail: Fail) -> NoReturn:
        """Let the task retry a transient error; on the last attempt record the failure instead."""
        if self.hooks.may_retry():
            raise exc
        fail(f"gave up after retries: {exc}")
        raise ReservationFailed(str(exc)) from exc

    @contextmanager
    def failing(self, fail: Fail) -> Iterator[None]:
        """Map the core's errors onto vcld's outcomes: transient → retry (then fail), others → fail;
        ``fail(message)`` records the reservation's failure."""
        try:
            yield
        except EXPECTED_FAILURES:
            raise  # already decided: failed and recorded, or not ours any more
        except TransientError as exc:
            self.retry_or_fail(exc, fail)
        except PermanentError as exc:
            fail(f"{type(exc).__name__}: {exc}")
            raise ReservationFailed(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # A soft time limit or a bug: the reservation still fails the way vcld fails it.
            fail(f"unexpected {type(exc).__name__}: {exc}")
            raise

    def phase(self, step: str) -> AbstractContextManager[None]:
        """Time a step of the flow into the summary's timings (``load``, ``capture``, ``unload``)."""
        return self.stopwatch.phase(step)

    def progress_reporter(
        self, span: tuple[float, float], *, record_loadlog: bool
    ) -> Callable[[ProgressEvent], None]:
        """The core's progress events as task progress: load stages at their fixed percentage (and,
        with ``record_loadlog``, as computerloadlog rows), copy percentages mapped into ``span``."""
        r, hooks, store = self.reservation, self.hooks, self.store
        last = {"percent": -1.0, "at": 0.0}

        def on_progress(event: ProgressEvent) -> None:
            if event.stage in LOAD_STAGE_PERCENT:
                if record_loadlog:
                    store.insert_loadlog(r.reservation_id, r.computer_id, event.stage, event.message)
                hooks.progress(event.stage, LOAD_STAGE_PERCENT[event.stage], event.message)
                return
            if event.percent is None:
                hooks.progress(event.stage, span[0], event.message)
                return
            now = self.stopwatch.elapsed()
            if (
                event.percent - last["percent"] < PROGRESS_STEP
                and now - last["at"] < PROGRESS_PAUSE
                and event.percent < 100
            ):
                return
            last["percent"], last["at"] = event.percent, now
            lo, hi = span
            hooks.progress(event.stage, lo + (hi - lo) * event.percent / 100.0, event.message)

        return on_progress

    def finish(self, last_stage: str) -> dict[str, Any]:
        """The task's result: the request's state now, the total time, progress at 100 %."""
        states = self.store.request_states(self.request_id)
        self.summary.request_state = states[0] if states else None
        self.stopwatch.total()
        self.hooks.progress(last_stage, 100.0)
        return self.summary.as_dict()


@contextmanager
def claimed_work(
    hooks: TaskHooks, reservation_id: int, action: str, *, deps: TaskDeps
) -> Iterator[ClaimedWork]:
    """Claim the request of ``reservation_id`` for ``action`` (``load``, ``reload``, ``capture``,
    ``maintenance``), read the reservation and hold its computer's lock while the ``with`` body runs;
    see the module doc. Raises AlreadyHandled (stand down) or ReservationFailed (recorded)."""
    from_state = BY_NAME[action].from_state
    stopwatch = Stopwatch()
    # One dict: the stopwatch's phases, the lock's bounds and the core's steps all land in the result.
    summary = Summary(action=action, reservation_id=reservation_id, timings=stopwatch.timings)
    request_id, outcome = _claim(deps, reservation_id, from_state, hooks.owner)
    failpoint(f"{action}.claimed")
    summary.request_id = request_id
    hooks.progress("claimed", 1.0, outcome.value)
    r = _load_reservation(deps.store, reservation_id, request_id, action)
    summary.computer, summary.vmhost = r.computer_short_name, r.vmhost_short_name
    check_host(deps, r)  # a computer moved to another host: refused before any lock or libvirt call
    # The lock's token names this delivery (a redelivered copy of the message waits for it).
    token = delivery_token(hooks.owner)
    with hold_computer(
        deps, r.computer_id, summary.timings, owner=token, lease=deps.settings.lock_lease
    ) as held:
        _check_still_ours(deps.store, reservation_id, request_id, from_state, hooks.owner)
        provisioner = _make_provisioner(deps, r, action)
        yield ClaimedWork(
            deps, hooks, from_state, request_id, outcome, r, provisioner, summary, stopwatch, held
        )


def _claim(
    deps: TaskDeps, reservation_id: int, from_state: str, owner: str | None
) -> tuple[int, ClaimOutcome]:
    """Claim the request for this task (the dispatcher usually did: RESUMED); a claim that names
    another task (the sweep re-enqueued the request) is not ours."""
    store = deps.store
    found = store.reservation_request(reservation_id)
    if found is None:
        raise ReservationFailed(f"reservation {reservation_id} does not exist")
    request_id, state, laststate = found
    if owner is None:
        outcome = store.claim_request(request_id, from_state)
    else:
        outcome = store.claim_for_task(request_id, reservation_id, from_state, owner)
    if outcome is ClaimOutcome.LOST:
        # A lock an earlier delivery left is that delivery's (its token), never released here: it
        # ends with its lease.
        raise AlreadyHandled(
            f"request {request_id} is {state}/{laststate}, not {from_state} for task {owner}: nothing to do"
        )
    return request_id, outcome


def _check_still_ours(
    store: VclStore, reservation_id: int, request_id: int, from_state: str, owner: str | None
) -> None:
    """Inside the computer lock: the request is still claimed, and by this task."""
    states = store.request_states(request_id)
    if states is None or states[0] == "deleted" or states == ("complete", "deleted"):
        # The user ended it (the web's deleteRequest), not another task: see worker.db.cancel.
        raise RequestDeleted(f"request {request_id} was ended by its user ({states or 'gone'})")
    if states != ("pending", from_state):
        raise AlreadyHandled(f"request {request_id} is {states}; another task handled it")
    if owner is not None and not store.owns_claim(reservation_id, owner):
        raise AlreadyHandled(f"request {request_id} was handed to another task by the sweep")


def _load_reservation(store: VclStore, reservation_id: int, request_id: int, action: str) -> Reservation:
    try:
        return store.load_reservation(reservation_id)
    except VclDataError as exc:
        # Bad data in the VCL database: fail the request the way vcld's reservation_failed does.
        store.fail_request(request_id, reservation_id, f"{action}: {exc}")
        raise ReservationFailed(str(exc)) from exc


def _make_provisioner(deps: TaskDeps, r: Reservation, action: str) -> LibvirtProvisioner:
    """Bad data the core refuses fails the request (vcld's initialize → reservation_failed) instead of
    leaving it pending forever."""
    try:
        return provisioner_for(r, deps.settings)
    except PermanentError as exc:
        deps.store.fail_request(r.request_id, r.reservation_id, f"{action}: {type(exc).__name__}: {exc}")
        raise ReservationFailed(f"{type(exc).__name__}: {exc}") from exc


__all__ = [
    "LOAD_STAGE_PERCENT",
    "ClaimedWork",
    "TaskHooks",
    "claimed_work",
    "hold_computer",
    "provisioner_for",
]
