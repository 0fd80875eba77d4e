"""Retry policy of the task wrapper: transient errors retry with capped backoff, others never."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc

from worker.hypervisors.errors import ImageNotFoundError, LibvirtTransientError
from worker.tasks import flows, provisioning


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
    def flow(hooks: Any, reservation_id: int) -> dict[str, Any]:
        raise exc

    return flow


@pytest.mark.parametrize(
    "exc",
    [
        LibvirtTransientError("libvirtd went away"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server has gone away")),
    ],
)
def test_transient_errors_are_retried_with_capped_backoff(exc: BaseException) -> None:
    for attempt in range(provisioning.MAX_RETRIES):
        task = FakeTask(retries=attempt)
        with pytest.raises(Retry):
            provisioning._run(task, _flow(exc), 7)
        assert len(task.retried) == 1
        assert (
            0 <= task.retried[0] <= min(provisioning.BACKOFF_MAX, provisioning.BACKOFF_BASE ** (attempt + 1))
        )


def test_transient_error_after_the_last_retry_fails() -> None:
    task = FakeTask(retries=provisioning.MAX_RETRIES)
    with pytest.raises(LibvirtTransientError):
        provisioning._run(task, _flow(LibvirtTransientError("still down")), 7)
    assert task.retried == []


def test_permanent_errors_are_never_retried() -> None:
    task = FakeTask(retries=0)
    with pytest.raises(flows.ReservationFailed):
        provisioning._run(task, _flow(flows.ReservationFailed("ImageNotFoundError: no master")), 7)
    with pytest.raises(ImageNotFoundError):
        provisioning._run(task, _flow(ImageNotFoundError("no master")), 7)
    assert task.retried == []


def test_already_handled_is_a_successful_skip() -> None:
    task = FakeTask(retries=0)
    result = provisioning._run(task, _flow(flows.AlreadyHandled("request 3 is reserved/new")), 7)
    assert result == {"reservation_id": 7, "status": "skipped", "detail": "request 3 is reserved/new"}
