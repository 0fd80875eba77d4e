"""``vcl.call``: one provisioning call from vcld (delegated mode), run on the VM host's queue.

``vcl-worker call`` sends it; :func:`worker.delegated.operations.run_call` does the work. The task
adds only Celery concerns: the long (capture) time limits because any call may be a capture, late
ack and redelivery when the child dies, Celery's bounded retries for transient errors, a PROGRESS
state per load stage, and which worker and queue served the call (the two-host proof reads it).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from worker import wiring as runtime
from worker.app import app
from worker.delegated.methods import TASK_NAME
from worker.delegated.operations import run_call
from worker.tasks.provisioning import CaptureTask

log = logging.getLogger(__name__)


@app.task(bind=True, base=CaptureTask, name=TASK_NAME)  # type: ignore[untyped-decorator]  # Celery is untyped
def call(self: Task, method: str, reservation_id: int, args: list[str] | None = None) -> dict[str, Any]:
    """Run provisioning ``method`` for ``reservation_id`` as vcld's module; a JSON-able result."""
    reservation_id = int(reservation_id)
    task_id = str(self.request.id) if self.request.id else None

    def progress(stage: str, message: str) -> None:
        if task_id:
            self.update_state(
                state="PROGRESS",
                meta={"reservation_id": reservation_id, "method": method, "stage": stage, "message": message},
            )

    result = run_call(
        method,
        reservation_id,
        [str(a) for a in (args or [])],
        deps=runtime.task_deps(),  # the process's store, settings and Redis, resolved once
        owner=task_id,
        progress=progress,
    ).as_dict()
    delivery = self.request.delivery_info or {}
    result["worker"] = self.request.hostname
    result["queue"] = delivery.get("routing_key")
    log.info("vcl.call %s reservation %s -> %s", method, reservation_id, result)
    return result


__all__ = ["call"]
