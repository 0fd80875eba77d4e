"""The Celery application: ``celery -A worker.app worker|inspect|call|flower``.

Configuration follows Celery's guidance for long, idempotent infrastructure tasks
(shared/reference/anchors.md section 3): late acks with prefetch 1 so a crashed worker's task is
redelivered, a Redis visibility timeout longer than the longest task so a running task is never
handed to a second worker, task events for Flower, JSON only.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.config import Settings, get_settings

DEFAULT_QUEUE = "vcl.default"


VMHOST_QUEUE_PREFIX = "vmhost."


def vmhost_queue(vmhost_short_name: str) -> str:
    """The queue a VM host's worker consumes: ``vmhost.<host short name>``."""
    return f"{VMHOST_QUEUE_PREFIX}{vmhost_short_name}"


def vmhost_of_queue(queue: str | None) -> str | None:
    """The VM host a queue (a delivery's routing key) belongs to: ``vmhost.<host>`` → ``<host>``;
    None for any other queue. A host worker consumes its own host's queue only (``vcl-worker worker
    --vmhost``), so the queue a message came from names the host the worker serves."""
    if not queue or not queue.startswith(VMHOST_QUEUE_PREFIX):
        return None
    return queue[len(VMHOST_QUEUE_PREFIX) :] or None


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str] | None:
    """Route ``vcl.*`` tasks to the queue of the reservation's VM host.

    An explicit ``queue=`` (dispatcher, ``vcl-worker enqueue``, ``celery call --queue``) wins; without
    one the reservation's VM host is looked up in the VCL database, so a bare
    ``celery -A worker.app call vcl.load --args '[42]'`` still reaches the right host.
    """
    if not name.startswith("vcl.") or options.get("queue"):
        return None
    reservation_id = None
    if args:
        reservation_id = args[0]
    elif kwargs:
        reservation_id = kwargs.get("reservation_id")
    if reservation_id is None:
        return None
    # Lazy (no cycle: wiring never imports the app): only a send without a queue needs the database.
    from worker.wiring import vmhost_for_reservation

    host = vmhost_for_reservation(int(reservation_id))
    if host is None:
        return None
    return {"queue": vmhost_queue(host)}


def configure(app: Celery, settings: Settings) -> None:
    """Apply the worker's Celery configuration for ``settings``."""
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Crash safety: ack after the task returns, reserve one message per child.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # A task whose child was killed is redelivered (tasks opt in with reject_on_worker_lost).
        task_reject_on_worker_lost=False,
        # Kept on after review: when the broker connection drops, kombu closes the channel and puts
        # every delivered-but-unacked message back on its queue (QoS.restore_unacked_once); a task
        # left running would then run twice under one task id (the per-computer lock, whose token
        # names the delivery, makes the second copy wait for the first). Cancelling makes the blip a
        # plain redelivery: the flows resume idempotently, and VCL_MAX_DELIVERIES bounds how often.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Observability: STARTED state, events for Flower (sent events show queued tasks too).
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        task_default_queue=DEFAULT_QUEUE,
        task_routes=(route_task,),
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("vcl_worker", include=["worker.tasks.provisioning", "worker.tasks.delegated"])
    configure(celery_app, settings)
    return celery_app


app = make_app()
