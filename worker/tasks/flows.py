"""``new``/``reload`` and ``tomaintenance`` as vcld's new.pm does them, over :func:`claimed_work`.

These functions hold the *order of state transitions* only: the claim, the lock and the failure
mapping are :mod:`worker.tasks.claimed`'s, provisioning lives in ``worker.hypervisors`` and SQL in
``worker.db``. They talk to Celery through :class:`~worker.tasks.claimed.TaskHooks`, so the same flow
runs in a prefork worker, the embedded demo, the bench and tests.

A load is skipped only in two cases (see :func:`_skip_reason`): vcld's shortcut (a ``new`` request on
an ``available`` computer whose guest already answers with this revision), or this very task (same
Celery task id) already finished the load before it died. A ``reload`` always rebuilds the disk from
the master: the previous user's disk never survives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

from worker.db.cancel import HandBack
from worker.db.errors import StateConflictError
from worker.failpoints import failpoint
from worker.hypervisors.errors import PermanentError, TransientError
from worker.hypervisors.provisioner import LoadResult, NodeStatus

from .claimed import ClaimedWork, TaskHooks, claimed_work
from .deps import TaskDeps
from .outcomes import RequestDeleted, Summary

log = logging.getLogger(__name__)
# Marks "this task delivery finished the core load": a redelivery of the same task id may skip it.
_LOAD_DONE_KEY = "vcl:load-done:{}"
# A master copy from the repository runs between startload and transfervm.
COPY_SPAN = (5.0, 50.0)


def run_load(
    hooks: TaskHooks, reservation_id: int, *, deps: TaskDeps, action: str = "load"
) -> dict[str, Any]:
    """``new``/``reload`` (``action`` load/reload): vcld's new.pm → reload_image → libvirt load.

    The claim is checked again (:meth:`ClaimedWork.still_ours`) before each destructive step and
    before the result is recorded: a request the user deleted meanwhile stands the load down and the
    computer is handed back according to how far it got (:func:`_stand_down`)."""
    with claimed_work(hooks, reservation_id, action, deps=deps) as work:
        reached = [HandBack.LEAVE]
        try:
            _load(work, action, reached)
        except RequestDeleted as exc:
            _stand_down(work, reached[0], exc)
    return work.finish("loadimagecomplete")


def _load(work: ClaimedWork, action: str, reached: list[HandBack]) -> None:
    """The load's steps; ``reached[0]``: what the computer needs if the request is deleted now."""
    store, r, summary, provisioner = work.store, work.reservation, work.summary, work.provisioner
    computer_state = store.computer_state(r.computer_id)
    work.still_ours()
    _recorded(work, lambda: store.start_load(r))
    # ``reloading`` now; the disk is untouched until the core runs.
    reached[0] = HandBack.RESTORE if computer_state == "available" else HandBack.RELOAD
    failpoint(f"{action}.started")
    with work.failing(lambda msg: _recorded(work, lambda: store.fail_load(r, msg))):
        provisioner.initialize()
        skip = _skip_reason(work, computer_state)
        if skip:
            summary.detail = skip
            summary.domain = provisioner.get_domain_name()
        else:
            work.still_ours()
            reached[0] = HandBack.RELOAD
            with work.phase("load"):
                result = provisioner.load(progress=work.progress_reporter(COPY_SPAN, record_loadlog=True))
            failpoint(f"{action}.loaded")
            if result.generated_macs:  # before the done mark: a redelivery that skips must find them
                store.record_generated_macs(r, result.generated_macs.eth0, result.generated_macs.eth1)
            _mark_load_done(work)
            _record_load(summary, result)
        reached[0] = HandBack.LOADED
    failpoint(f"{action}.before_finish")
    work.still_ours()
    _recorded(work, lambda: store.finish_load(r))
    failpoint(f"{action}.finished")


def _recorded(work: ClaimedWork, write: Callable[[], None]) -> None:
    """A guarded write of the load's states; a conflict because the user deleted the request between
    the last check and the write is that deletion (RequestDeleted), anything else stays an error."""
    try:
        write()
    except StateConflictError:
        work.still_ours()
        raise


def _stand_down(work: ClaimedWork, how: HandBack, exc: RequestDeleted) -> NoReturn:
    """vcld's new.pm step 7 / reservation_failed for a deleted request: complete it, hand the
    computer back (``available`` when it was not touched or is loaded and ready, a reload request
    where the disk was touched), and end the delivery as handled (a ``skipped`` result)."""
    r = work.reservation
    outcome = work.store.hand_back(r, how, f"request deleted during the {work.summary.action}: {exc}")
    log.info("reservation %s: %s; computer %s → %s", r.reservation_id, exc, r.computer_short_name, outcome)
    raise RequestDeleted(f"{exc}; load stood down ({how.name.lower()}), computer: {outcome}") from exc


def _skip_reason(work: ClaimedWork, computer_state: str) -> str:
    """Why this delivery may skip the core load, or "" when it must (re)build the disk."""
    owner = work.owner
    if owner is not None and work.deps.kv.get(_LOAD_DONE_KEY.format(owner)) is not None:
        return "this task already completed the load before it was redelivered"
    # vcld's shortcut (new.pm: node_status READY): only for a new reservation on an available
    # computer, i.e. one a reload left clean and nobody has used since. Never for a reload.
    if (
        work.from_state == "new"
        and computer_state == "available"
        and work.provisioner.node_status() is NodeStatus.READY
    ):
        return "computer available and already answering with this revision; load skipped"
    return ""


def _mark_load_done(work: ClaimedWork) -> None:
    if work.owner is not None:
        work.deps.kv.set(_LOAD_DONE_KEY.format(work.owner), "1", ex=work.settings.computer_lock_ttl)


def _record_load(summary: Summary, result: LoadResult) -> None:
    summary.domain = result.domain_name
    summary.domain_type = result.domain_type
    summary.disks = {"cow": result.cow_path, "master": result.master_path}
    summary.master_copied = result.master_copied
    summary.timings.update({f"core_{k}": v for k, v in result.timings.items()})
    if result.answer is not None:
        summary.address, summary.port = result.answer.address, result.answer.port
        summary.banner = result.answer.banner


def run_maintenance(hooks: TaskHooks, reservation_id: int, *, deps: TaskDeps) -> dict[str, Any]:
    """``tomaintenance``: new.pm → post_maintenance_action → computer maintenance, vmhostid NULL."""
    with claimed_work(hooks, reservation_id, "maintenance", deps=deps) as work:
        store, r, summary = work.store, work.reservation, work.summary
        failure = ""
        try:
            work.provisioner.initialize()
            with work.phase("unload"):
                removed = work.provisioner.post_maintenance_action()
            summary.detail = f"removed domains: {', '.join(removed) or 'none'}"
        except TransientError as exc:
            if work.may_retry():
                raise
            failure = f"post_maintenance_action failed: {exc}"
        except PermanentError as exc:
            # vcld logs this as CRITICAL and still puts the computer in maintenance (new.pm 4).
            failure = f"post_maintenance_action failed: {type(exc).__name__}: {exc}"
        if failure:
            summary.detail = failure
            store.insert_loadlog(r.reservation_id, r.computer_id, "failed", failure)
        store.finish_maintenance(r)
    return work.finish("complete")


__all__ = ["COPY_SPAN", "run_load", "run_maintenance"]
