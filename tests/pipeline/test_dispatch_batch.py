"""A dispatcher pass claims and publishes its requests in one batch: every task still reaches its host
queue and runs, and Flower's source, the ``task-sent`` events, still names each task (sent as one
``task.multi`` message per pass)."""

from __future__ import annotations

import threading
import time
from typing import Any

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.stack import Stack
from worker.dispatcher import dispatch_once

from .conftest import lock_kv


def test_one_pass_enqueues_all_due_requests_and_announces_each(
    stack: Stack, celery_worker_proc: CeleryWorker
) -> None:
    sent: dict[str, dict[str, Any]] = {}
    listening = threading.Event()
    receiver: Any = None

    def listen() -> None:
        nonlocal receiver
        with stack.app.connection_for_read() as conn:
            receiver = stack.app.events.Receiver(
                conn, handlers={"task-sent": lambda event: sent.__setitem__(event["uuid"], event)}
            )
            receiver.on_iteration = listening.set  # called before each wait for events
            receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(30)
    time.sleep(0.5)  # the fanout subscription is in place before the pass publishes

    requests = [stack.new_request(i, "reload") for i in (0, 1)]
    try:
        done = dispatch_once(
            stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=lock_kv(stack)
        )
        enqueued = {d.request_id: d for d in done if d.action == "enqueued"}
        assert set(enqueued) == {req for req, _ in requests}, done
        for d in enqueued.values():
            value = stack.app.AsyncResult(d.task_id).get(timeout=300)
            assert value["request_state"] == "complete", value
        for req, _res in requests:
            assert stack.store.request_states(req) == ("complete", "reload")
    finally:
        for i in (0, 1):  # the session's later tests expect computers without a domain
            stack.reset_computer(i)

    deadline = time.monotonic() + 10
    while len(sent) < len(enqueued) and time.monotonic() < deadline:
        time.sleep(0.1)
    receiver.should_stop = True
    thread.join(10)
    for d in enqueued.values():
        event = sent[str(d.task_id)]
        assert (event["name"], event["queue"]) == ("vcl.reload", stack.queue), event
