"""Right host only: a delivery acts only on a computer of the VM host its worker serves.

A VM host's worker consumes ``vmhost.<host>``; the queue a message came from
(``delivery_info['routing_key']``) names the host the worker serves (:attr:`TaskDeps.vmhost`). A
computer an administrator moved to another host while its task was queued is refused there, before
any lock or libvirt call, and the task layer re-sends the task to the right host's queue (Celery's
``retry(queue=...)``: same task id, so the dispatcher's claim still names it; bounded by the task's
retries) or fails it when the computer has no host.
"""

from __future__ import annotations

from worker.reservation import Reservation

from .deps import TaskDeps


class WrongHostError(Exception):
    """The reservation's computer is not on this worker's VM host; ``right_host`` is where it is
    (None: on no host). Not a TransientError: it is re-routed, never retried on the same queue."""

    def __init__(self, reservation_id: int, computer: str, here: str, right_host: str | None) -> None:
        self.reservation_id, self.computer, self.here, self.right_host = (
            reservation_id, computer, here, right_host,
        )  # fmt: skip
        where = f"on VM host {right_host}" if right_host else "on no VM host"
        super().__init__(
            f"reservation {reservation_id}: computer {computer} is {where}, not on this worker's "
            f"host {here}; refused without touching libvirt"
        )


def check_host(deps: TaskDeps, r: Reservation) -> None:
    """Raise :class:`WrongHostError` unless ``r``'s computer is on ``deps.vmhost`` (when known)."""
    if deps.vmhost is None or r.vmhost_short_name == deps.vmhost:
        return
    raise WrongHostError(r.reservation_id, r.computer_short_name, deps.vmhost, r.vmhost_short_name or None)


__all__ = ["WrongHostError", "check_host"]
