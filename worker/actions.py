"""The one table of VCL work this worker does: action, the request state it starts from, its task.

Shared by the dispatcher (state → task), the CLI (action → task), the flows (action → state to claim
from) and the Celery task module (task names). Imports nothing, so a management node that only
dispatches loads neither Celery tasks nor libvirt to read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Action:
    name: str  # CLI/flow name: load, reload, capture, maintenance
    from_state: str  # VCL request state the work is claimed from
    task_name: str  # Celery task name


ACTIONS: tuple[Action, ...] = (
    Action("load", "new", "vcl.load"),
    Action("reload", "reload", "vcl.reload"),
    Action("capture", "image", "vcl.capture"),
    Action("maintenance", "tomaintenance", "vcl.maintenance"),
)
BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}
BY_STATE: dict[str, Action] = {a.from_state: a for a in ACTIONS}
