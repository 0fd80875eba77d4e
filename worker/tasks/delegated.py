"""``vcl.call``: one provisioning call from vcld (delegated mode), run on the VM host's queue.

``vcl-worker call`` sends it; :func:`worker.delegated.operations.run_call` does the work. The task
adds only Celery concerns: the long (capture) time limits because any call may be a capture, late
ack and redelivery when the child dies (bounded by ``VCL_MAX_DELIVERIES`` like the other tasks), a
PROGRESS state per load stage, and which worker and queue served the call (the two-host proof reads
it).

vcld waits a bounded time: the CLI sends the call with Celery's ``expires`` and the same moment as
``deadline``, and revokes it when it stops waiting. The task is never retried automatically (a busy
computer or a transient error is answered as a failure, which vcld handles), and a call that runs
after its deadline answers ``expired`` without changing anything. A computer that is not on this
worker's host is re-routed to its host's queue (:mod:`worker.tasks.host_check`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from worker.app import app
from worker.delegated.methods import TASK_NAME
from worker.delegated.operations import refused, run_call
from worker.tasks.host_check import WrongHostError
from worker.tasks.provisioning import (
    TRANSIENT_ERRORS,
    DelegatedTask,
    count_delivery,
    delivery_deps,
    reroute,
)

log = logging.getLogger(__name__)


@app.task(bind=True, base=DelegatedTask, name=TASK_NAME)  # type: ignore[untyped-decorator]  # Celery is untyped
def call(
    self: Task,
    method: str,
    reservation_id: int,
    args: list[str] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run provisioning ``method`` for ``reservation_id`` as vcld's module; a JSON-able result.
    ``deadline``: epoch seconds after which the caller no longer waits (None: none)."""
    reservation_id = int(reservation_id)
    task_id = str(self.request.id) if self.request.id else None

    def progress(stage: str, message: str) -> None:
        if task_id:
            self.update_state(
                state="PROGRESS",
                meta={"reservation_id": reservation_id, "method": method, "stage": stage, "message": message},
            )

    deps = delivery_deps(self)  # the process's store, settings and Redis, resolved once
    count = count_delivery(self, deps)
    try:
        if count > deps.settings.max_deliveries:
            reply = refused(
                method, reservation_id,
                f"delivered {count} times, the worker child died each time; not run again",
            )  # fmt: skip
        else:
            reply = run_call(
                method, reservation_id, [str(a) for a in (args or [])], deps=deps, owner=task_id,
                progress=progress, deadline=None if deadline is None else float(deadline),
            )  # fmt: skip
    except WrongHostError as exc:
        raise reroute(self, exc) from None
    except TRANSIENT_ERRORS as exc:
        # Not retried: vcld decides what to do with a failed call (a retry could act too late).
        reply = refused(method, reservation_id, f"{type(exc).__name__}: {exc}")
    result = reply.as_dict()
    delivery = self.request.delivery_info or {}
    result["worker"] = self.request.hostname
    result["queue"] = delivery.get("routing_key")
    log.info("vcl.call %s reservation %s -> %s", method, reservation_id, result)
    return result


__all__ = ["call"]
