"""Retry policy of the task wrapper: transient errors retry with capped backoff, others never."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc

from worker.hypervisors.errors import ImageNotFoundError, LibvirtTransientError
from worker.tasks import provisioning
from worker.tasks.outcomes import AlreadyHandled, ReservationFailed


class Retry(Exception):
    pass


class FakeTask:
    max_retries = provisioning.MAX_RETRIES

    def __init__(self, retries: int) -> None:
        self.request = SimpleNamespace(id=None, retries=retries)
        self.retried: list[float] = []

    def retry(self, exc: BaseException, countdown: float) -> Retry:
        self.retried.append(countdown)
        return Retry(str(exc))


def _flow(exc: BaseException) -> Any:
    def flow(hooks: Any, reservation_id: int, **_: Any) -> dict[str, Any]:
        raise exc

    return flow


@pytest.mark.parametrize(
    "exc",
    [
        LibvirtTransientError("libvirtd went away"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server has gone away")),
    ],
)
def test_transient_errors_are_retried_by_celery_then_fail(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Celery's own autoretry_for: every transient error is retried MAX_RETRIES times, then fails."""
    attempts: list[int] = []

    def flow(hooks: Any, reservation_id: int, **_: Any) -> dict[str, Any]:
        attempts.append(reservation_id)
        raise exc

    monkeypatch.setattr(provisioning.flows, "run_load", flow)
    countdowns: list[float] = []
    real_retry = provisioning.load.retry

    def spy_retry(*args: Any, **kwargs: Any) -> Any:
        countdowns.append(float(kwargs.get("countdown") or 0))
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(provisioning.load, "retry", spy_retry)
    result = provisioning.load.apply(args=[7])  # eager: Celery runs its retries in-process
    assert result.state == "FAILURE"
    assert isinstance(result.result, type(exc))
    assert len(attempts) == 1 + provisioning.MAX_RETRIES
    # Celery asks retry() once more on the last attempt; that call re-raises the error instead.
    assert len(countdowns) == provisioning.MAX_RETRIES + 1
    for attempt, countdown in enumerate(countdowns):
        assert 0 <= countdown <= min(provisioning.BACKOFF_MAX, provisioning.BACKOFF_BASE * 2**attempt)


def test_task_options_come_from_the_base_classes() -> None:
    settings = provisioning._SETTINGS
    for task in (provisioning.load, provisioning.reload, provisioning.maintenance):
        assert (task.soft_time_limit, task.time_limit) == (
            settings.load_soft_time_limit,
            settings.load_time_limit,
        )
    assert (provisioning.capture.soft_time_limit, provisioning.capture.time_limit) == (
        settings.capture_soft_time_limit,
        settings.capture_time_limit,
    )
    for task in (provisioning.load, provisioning.reload, provisioning.capture, provisioning.maintenance):
        assert task.acks_late and task.reject_on_worker_lost
        assert task.autoretry_for == provisioning.TRANSIENT_ERRORS


def test_permanent_errors_are_never_retried() -> None:
    task = FakeTask(retries=0)
    with pytest.raises(ReservationFailed):
        provisioning._run(task, _flow(ReservationFailed("ImageNotFoundError: no master")), 7)
    with pytest.raises(ImageNotFoundError):
        provisioning._run(task, _flow(ImageNotFoundError("no master")), 7)
    assert task.retried == []


def test_already_handled_is_a_successful_skip() -> None:
    task = FakeTask(retries=0)
    result = provisioning._run(task, _flow(AlreadyHandled("request 3 is reserved/new")), 7)
    assert result == {"reservation_id": 7, "status": "skipped", "detail": "request 3 is reserved/new"}
