"""A live rich progress bar over a Celery task's PROGRESS states (CLI ``--wait`` and the demo)."""

from __future__ import annotations

import time
from typing import Any


def wait_with_progress(result: Any, timeout: float | None = None) -> tuple[str, Any]:
    """Follow a task's PROGRESS states with a rich progress bar until it finishes."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        bar = progress.add_task(result.id[:8], total=100.0, stage="queued")
        while True:
            state = result.state
            if state == "PROGRESS" and isinstance(result.info, dict):
                progress.update(
                    bar,
                    completed=float(result.info.get("percent", 0.0)),
                    stage=str(result.info.get("stage", "")),
                )
            elif state == "STARTED":
                progress.update(bar, stage="started")
            elif state in {"SUCCESS", "FAILURE", "REVOKED"}:
                progress.update(bar, completed=100.0 if state == "SUCCESS" else None, stage=state.lower())
                break
            if deadline is not None and time.monotonic() > deadline:
                return "TIMEOUT", None
            time.sleep(0.25)
    return result.state, result.result
