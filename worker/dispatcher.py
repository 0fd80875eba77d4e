"""The dispatcher: vcld's main loop, minus the forking.

Every ``managementnode.checkininterval`` seconds it checks in, asks the DB layer for the requests
due on this management node (vcld's ``get_management_node_requests`` + ``check_time``), claims each
one atomically (``UPDATE … WHERE stateid = :expected``) and enqueues the matching task on the
queue of the reservation's VM host. A request that another dispatcher claimed first is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from worker.actions import BY_STATE
from worker.app import vmhost_queue
from worker.db.requests import ClaimOutcome
from worker.db.schedule import DueRequest
from worker.db.store import VclStore
from worker.delegated.guard import refuse_if_vcld_serves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    request_id: int
    reservation_id: int
    state: str
    action: str  # "enqueued", "removed", "skipped"
    task_name: str | None = None
    task_id: str | None = None
    queue: str | None = None
    reason: str = ""


def dispatch_once(store: VclStore, celery_app: Celery, management_node_id: int) -> list[Dispatched]:
    """One pass of vcld's loop for ``management_node_id``; returns what was done with each request."""
    from worker import wiring as runtime

    # vcld and the dispatcher must never claim on the same management node (worker/delegated/guard.py).
    refuse_if_vcld_serves(store, management_node_id)
    store.update_lastcheckin(management_node_id)
    done: list[Dispatched] = []
    seen_requests: set[int] = set()
    for due in store.find_due_requests(management_node_id):
        if due.action == "remove":
            # complete/failed requests whose work is over: vcld deletes them (utils.pm:delete_request).
            store.delete_request(due.request_id)
            done.append(Dispatched(due.request_id, due.reservation_id, due.state, "removed"))
            continue
        if due.action != "start":
            done.append(_skip(due, f"check_time={due.action}: preloading is not implemented"))
            continue
        action = BY_STATE.get(due.state)
        if action is None:
            done.append(_skip(due, f"state {due.state} needs no provisioning"))
            continue
        if due.vmhost_short_name is None:
            done.append(_skip(due, f"computer {due.computer_id} has no VM host"))
            continue
        if due.request_id in seen_requests:
            continue  # one task per request (cluster requests are not supported)
        seen_requests.add(due.request_id)
        if store.claim_request(due.request_id, due.state) is not ClaimOutcome.CLAIMED:
            done.append(_skip(due, "claimed by another dispatcher"))
            continue
        task_name = action.task_name
        queue = vmhost_queue(due.vmhost_short_name)
        try:
            result = celery_app.send_task(task_name, args=[due.reservation_id], queue=queue)
        except Exception:
            # Give the request back so the next pass (or another dispatcher) can take it.
            store.unclaim_request(due.request_id, due.state)
            raise
        runtime.remember_task(due.reservation_id, result.id)
        log.info("request %s (%s) → %s on %s [%s]", due.request_id, due.state, task_name, queue, result.id)
        done.append(
            Dispatched(due.request_id, due.reservation_id, due.state, "enqueued", task_name, result.id, queue)
        )
    return done


def _skip(due: DueRequest, reason: str) -> Dispatched:
    return Dispatched(due.request_id, due.reservation_id, due.state, "skipped", reason=reason)


def run_forever(
    store: VclStore,
    celery_app: Celery,
    management_node_id: int,
    on_pass: Callable[[list[Dispatched]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Loop like vcld: pass, then sleep the node's ``checkininterval``."""
    while not should_stop():
        started = time.monotonic()
        interval = store.checkin_interval(management_node_id)
        try:
            done = dispatch_once(store, celery_app, management_node_id)
        except Exception:
            log.exception("dispatch pass failed; retrying after %s s", interval)
            done = []
        if on_pass is not None:
            on_pass(done)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
