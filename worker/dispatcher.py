"""The dispatcher: vcld's main loop, minus the forking.

Every ``managementnode.checkininterval`` seconds it checks in, asks the DB layer for the requests
due on this management node (vcld's ``get_management_node_requests`` + ``check_time``), claims each
one atomically (``UPDATE … WHERE stateid = :expected``) for a Celery task id chosen first, enqueues
that task on the queue of the reservation's VM host and marks the claim sent. A request that another
dispatcher claimed first is skipped. Only computers whose provisioning module is libvirt are claimed
(a mixed site's VMware or OpenStack computers, and the vcld bridge's, are someone else's).

``deleted``/``timeout`` requests are reclaimed as vcld's ``reclaim.pm`` does (a reload request) once
no task holds the computer's lock (a load the user cancelled hands the computer back itself); a
``reserved``/``inuse`` reservation past its ``end`` is timed out first (``inuse.pm``). :func:`sweep`
makes sure no claim stays ``pending`` for good.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, replace
from enum import StrEnum
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from worker.actions import BY_STATE
from worker.app import vmhost_queue
from worker.config import Settings
from worker.db.cancel import ENDABLE_STATES
from worker.db.claim_batch import ClaimWish
from worker.db.reservation_row import LIBVIRT_PERL_PACKAGE
from worker.db.schedule import DueRequest
from worker.db.store import VclStore
from worker.db.sweep import PendingClaim
from worker.delegated.guard import refuse_if_vcld_serves
from worker.failpoints import failpoint
from worker.liveness import gone_tasks, task_infos
from worker.tasks.locks import computer_lock_name
from worker.tasks.task_ids import remember_task_ids

log = logging.getLogger(__name__)

#: vcld's default check-in interval, used while the database cannot tell the node's own.
DEFAULT_INTERVAL = 12
#: Celery states of a task that is over: a claim still pending behind it was never recorded.
_FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class SweepVerdict(StrEnum):
    """What the sweep does with a pending claim (see :func:`sweep_verdict`)."""

    WAIT = "wait"
    REQUEUE = "requeue"
    FAIL = "fail"


class DispatchAction(StrEnum):
    """What a pass did with a request (a StrEnum: the CLI prints, and tests compare, the values)."""

    ENQUEUED = "enqueued"
    REMOVED = "removed"
    SKIPPED = "skipped"
    RECLAIMED = "reclaimed"
    ENDED = "ended"  # past its end time: timeout (then reclaimed)
    # The sweep's verdicts (SweepVerdict), reported under their own values.
    REQUEUED = "requeue"
    FAILED = "fail"


@dataclass(frozen=True)
class Dispatched:
    request_id: int
    reservation_id: int
    state: str
    action: DispatchAction
    _: KW_ONLY
    task_name: str | None = None
    task_id: str | None = None
    queue: str | None = None
    reason: str = ""


def not_ours(perlpackage: str | None) -> str:
    """Why the dispatcher must leave a computer alone, or "" when its module is libvirt."""
    if perlpackage == LIBVIRT_PERL_PACKAGE:
        return ""
    return f"provisioning module {perlpackage or 'unknown'} is not {LIBVIRT_PERL_PACKAGE}"


def dispatch_once(
    store: VclStore,
    celery_app: Celery,
    management_node_id: int,
    *,
    settings: Settings,
    kv: Any,
    sweep_grace: float | None = None,
) -> list[Dispatched]:
    """One pass of vcld's loop for ``management_node_id``; returns what was done with each request.

    ``settings``: the sweep's grace periods; ``kv``: the Redis where task ids are remembered for
    ``vcl-worker status`` (both resolved once by the caller, e.g. ``vcl-worker dispatch``)."""
    # vcld and the dispatcher must never claim on the same management node (worker/delegated/guard.py).
    refuse_if_vcld_serves(store, management_node_id)
    store.update_lastcheckin(management_node_id)
    # The sweep first: it judges the claims of earlier passes (this pass's are too young to judge).
    grace = settings.sweep_grace if sweep_grace is None else sweep_grace
    done = sweep(store, celery_app, management_node_id, grace, settings=settings, kv=kv)
    seen_requests: set[int] = set()
    wishes: list[_Wish] = []
    for due in store.find_due_requests(management_node_id):
        if due.action == "remove":
            # complete/failed requests whose work is over: vcld deletes them (utils.pm:delete_request).
            store.delete_request(due.request_id)
            done.append(Dispatched(due.request_id, due.reservation_id, due.state, DispatchAction.REMOVED))
            continue
        if due.state in ENDABLE_STATES and due.past_end and due.request_id not in seen_requests:
            # inuse.pm at the end time: timeout, then reclaim.pm in the same pass (a fresh disk).
            seen_requests.add(due.request_id)
            done.extend(_end(store, due, kv))
            continue
        if due.action != "start":
            done.append(_skip(due, f"check_time={due.action}: preloading is not implemented"))
            continue
        if due.request_id in seen_requests:
            continue  # one task per request (cluster requests are not supported)
        if due.state in ("deleted", "timeout") or BY_STATE.get(due.state) is not None:
            reason = not_ours(due.perlpackage)
            if reason:
                done.append(_skip(due, f"computer {due.computer_id}: {reason}"))
                continue
        if due.state in ("deleted", "timeout"):
            seen_requests.add(due.request_id)
            done.append(_reclaim(store, due, kv))
            continue
        action = BY_STATE.get(due.state)
        if action is None:
            done.append(_skip(due, f"state {due.state} needs no provisioning"))
            continue
        if due.vmhost_short_name is None:
            done.append(_skip(due, f"computer {due.computer_id} has no VM host"))
            continue
        seen_requests.add(due.request_id)
        claim = ClaimWish(due.request_id, due.reservation_id, due.computer_id, due.state, str(uuid.uuid4()))
        wishes.append(_Wish(claim, action.task_name, vmhost_queue(due.vmhost_short_name)))
    done.extend(_claim_and_enqueue(store, celery_app, wishes, kv=kv))
    return done


def _end(store: VclStore, due: DueRequest, kv: Any) -> list[Dispatched]:
    """A ``reserved``/``inuse`` reservation past its end: ``timeout`` (guarded on the end time, so an
    extension the web made meanwhile wins), then reclaimed."""
    reason = not_ours(due.perlpackage)
    if reason:
        return [_skip(due, f"computer {due.computer_id}: {reason}")]
    if not store.time_out(due.request_id, due.reservation_id, due.state):
        return [_skip(due, "not past its end any more (extended) or changed meanwhile")]
    log.info("request %s (%s) ended at its end time %s", due.request_id, due.state, due.end)
    ended = Dispatched(due.request_id, due.reservation_id, due.state, DispatchAction.ENDED, reason="timeout")
    return [ended, _reclaim(store, replace(due, state="timeout", laststate=due.state), kv)]


def _reclaim(store: VclStore, due: DueRequest, kv: Any) -> Dispatched:
    """reclaim.pm for a ``deleted``/``timeout`` request, once no task holds its computer: a load
    whose request the user deleted completes it and hands the computer back itself."""
    if computer_locked(kv, due.computer_id):
        return _skip(due, f"computer {due.computer_id} is held by a running task; reclaimed once it is free")
    got = store.reclaim(due.request_id, due.reservation_id, due.state)
    log.info("request %s (%s) reclaimed: %s %s", due.request_id, due.state, got.outcome, got)
    return Dispatched(
        due.request_id, due.reservation_id, due.state, DispatchAction.RECLAIMED, reason=got.outcome
    )


def computer_locked(kv: Any, computer_id: int) -> bool:
    """Whether a task holds the computer's lock (``worker.tasks.locks``); unknown counts as held."""
    try:
        return kv.get(computer_lock_name(computer_id)) is not None
    except RedisError as exc:
        log.warning("computer %s: lock not readable (%s); reclaim deferred", computer_id, exc)
        return True


@dataclass(frozen=True)
class _Wish:
    claim: ClaimWish
    task_name: str
    queue: str


def _claim_and_enqueue(
    store: VclStore, celery_app: Celery, wishes: list[_Wish], *, kv: Any
) -> list[Dispatched]:
    """Claim all of a pass's startable requests at once, publish their tasks over one broker
    connection, then mark the claims sent: a constant number of statements per pass. A request
    another dispatcher claimed first is skipped; if publishing fails, the claims not yet published
    are given back (the published ones stay, marked sent) and the error propagates."""
    won = {c.request_id for c in store.claim_many([w.claim for w in wishes])}
    done = [
        Dispatched(w.claim.request_id, w.claim.reservation_id, w.claim.from_state, DispatchAction.SKIPPED,
                   reason="claimed by another dispatcher")
        for w in wishes if w.claim.request_id not in won
    ]  # fmt: skip
    claimed = [w for w in wishes if w.claim.request_id in won]
    if not claimed:
        return done
    failpoint("dispatch.claimed")
    sent: list[_Wish] = []
    try:
        with celery_app.producer_or_acquire() as producer:
            events = _SentEventBatch(celery_app, producer)
            for w in claimed:
                celery_app.send_task(
                    w.task_name,
                    args=[w.claim.reservation_id],
                    queue=w.queue,
                    task_id=w.claim.task_id,
                    producer=producer,
                    event_dispatcher=events,
                )
                sent.append(w)
            events.flush()
    finally:
        # Give the unpublished requests back so the next pass (or another dispatcher) can take them.
        if len(sent) < len(claimed):
            store.drop_many([w.claim for w in claimed[len(sent) :]])
        store.mark_many_sent([w.claim for w in sent])
        remember_task_ids(kv, {w.claim.reservation_id: w.claim.task_id for w in sent})
    for w in sent:
        c = w.claim
        log.info(
            "request %s (%s) → %s on %s [%s]", c.request_id, c.from_state, w.task_name, w.queue, c.task_id
        )
        done.append(
            Dispatched(
                c.request_id, c.reservation_id, c.from_state, DispatchAction.ENQUEUED,
                task_name=w.task_name, task_id=c.task_id, queue=w.queue,
            )
        )  # fmt: skip
    return done


class _SentEventBatch:
    """The ``task-sent`` events of one pass (``task_send_sent_event``: Flower shows queued tasks) as
    one ``task.multi`` message, the way a worker batches its own task events, instead of one
    message per task. Celery's ``send_task`` hands each event to ``event_dispatcher.publish``;
    this buffers it in an :class:`~celery.events.EventDispatcher` of the task group."""

    def __init__(self, celery_app: Celery, producer: Any) -> None:
        self._evd = celery_app.events.Dispatcher(
            producer.connection, buffer_group={"task"}, buffer_limit=1_000_000
        )

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        self._evd.send(type, **fields)

    def flush(self) -> None:
        self._evd.flush()
        self._evd.close()


def task_states(celery_app: Celery, task_ids: list[str]) -> dict[str, str]:
    """Celery state of each task: one ``MGET`` on a key-value result backend (Redis), else one
    lookup per task. A task the backend does not know is ``PENDING``, as ``AsyncResult.state`` says."""
    return {t: info.state for t, info in task_infos(celery_app, task_ids).items()}


def _skip(due: DueRequest, reason: str) -> Dispatched:
    log.info("request %s (%s) skipped: %s", due.request_id, due.state, reason)
    return Dispatched(due.request_id, due.reservation_id, due.state, DispatchAction.SKIPPED, reason=reason)


def sweep_verdict(
    claim: PendingClaim, task_state: str, grace: float, queued_grace: float, *, worker_gone: bool = False
) -> SweepVerdict:
    """WAIT, REQUEUE or FAIL for a pending claim whose task is in ``task_state``.

    A task that is over (SUCCESS/FAILURE/REVOKED: e.g. killed by its hard time limit while the
    database was down) left the claim behind: fail it. A task Celery does not know (PENDING) was
    never sent (dispatcher killed between claim and ``send_task``) or its message is gone: once the
    grace period (for a sent task: the broker's visibility timeout) has passed, re-enqueue it once,
    then fail it. A running or retrying task is left alone while its worker holds it; one whose worker
    is gone (``worker_gone``, see :func:`worker.liveness.gone_tasks`) is re-enqueued once, then failed."""
    if task_state in _FINISHED:
        return SweepVerdict.FAIL
    if task_state != "PENDING":
        if not worker_gone:
            return SweepVerdict.WAIT
        return SweepVerdict.REQUEUE if claim.record.requeued == 0 else SweepVerdict.FAIL
    limit = queued_grace if claim.record.sent else grace
    if claim.age < limit:
        return SweepVerdict.WAIT
    return SweepVerdict.REQUEUE if claim.record.requeued == 0 else SweepVerdict.FAIL


def sweep(
    store: VclStore, celery_app: Celery, management_node_id: int, grace: float, *, settings: Settings, kv: Any
) -> list[Dispatched]:
    """Re-enqueue (exactly once) or fail every ``pending`` claim of this node whose task is lost.
    ``grace``: seconds an unsent claim may wait; a sent one waits the broker's visibility timeout."""
    queued_grace = float(settings.visibility_timeout)
    done: list[Dispatched] = []
    # Not a claim of this dispatcher's kind (e.g. an image request of vcld's): left alone.
    ours = [
        c for c in store.pending_claims(management_node_id)
        if BY_STATE.get(c.claimed_from) is not None and not not_ours(c.perlpackage)
        and c.vmhost_short_name is not None
    ]  # fmt: skip
    infos = task_infos(celery_app, [c.record.task_id for c in ours if c.record.task_id])
    states = {t: info.state for t, info in infos.items()}
    gone = gone_tasks(celery_app, [c for c in ours if c.record.task_id], infos, grace, settings=settings)
    for claim in ours:
        action = BY_STATE[claim.claimed_from]
        assert claim.vmhost_short_name is not None
        rec = claim.record
        task_state = states.get(rec.task_id, "PENDING")
        verdict = sweep_verdict(claim, task_state, grace, queued_grace, worker_gone=rec.task_id in gone)
        if verdict is SweepVerdict.WAIT:
            continue
        action_taken = DispatchAction(verdict.value)
        base = Dispatched(
            claim.request_id, claim.reservation_id, "pending", action_taken, task_id=rec.task_id
        )
        why = f"task {rec.task_id or '(none)'} is {task_state} after {claim.age:.0f} s"
        if rec.task_id in gone:
            why += ", its worker gone"
        if verdict is SweepVerdict.FAIL:
            message = f"{action.task_name}: {why}; the request was never finished"
            if store.fail_stranded(claim.reservation_id, rec.task_id or None, message):
                log.error("request %s failed by the sweep: %s", claim.request_id, why)
                done.append(replace(base, reason=why))
            continue
        new_id = str(uuid.uuid4())
        if not store.retarget_claim(claim.reservation_id, rec, new_id):
            continue  # another dispatcher's sweep took it
        queue = vmhost_queue(claim.vmhost_short_name)
        celery_app.send_task(action.task_name, args=[claim.reservation_id], queue=queue, task_id=new_id)
        store.mark_claim_sent(claim.reservation_id, new_id)
        remember_task_ids(kv, {claim.reservation_id: new_id})
        log.warning("request %s re-enqueued as %s on %s: %s", claim.request_id, new_id, queue, why)
        done.append(replace(base, task_name=action.task_name, task_id=new_id, queue=queue, reason=why))
    return done


def run_forever(
    store: VclStore,
    celery_app: Celery,
    management_node_id: int,
    *,
    settings: Settings,
    kv: Any,
    on_pass: Callable[[list[Dispatched]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Loop like vcld: pass, then sleep the node's ``checkininterval``. A database (or broker) outage
    fails a pass, never the loop: the interval read is inside the same guard, with vcld's default
    (or the last interval read) while the database does not answer."""
    interval = DEFAULT_INTERVAL
    while not should_stop():
        started = time.monotonic()
        try:
            interval = store.checkin_interval(management_node_id)
            done = dispatch_once(store, celery_app, management_node_id, settings=settings, kv=kv)
        except Exception:
            log.exception("dispatch pass failed; retrying after %s s", interval)
            done = []
        if on_pass is not None:
            on_pass(done)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
