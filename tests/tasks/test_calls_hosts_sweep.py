"""Issue 18, unit level: vcl.call is never retried automatically, a delivery knows the VM host its
queue names and refuses a computer of another host, and the sweep's verdict on a running claim
whose worker is gone."""

from __future__ import annotations

from typing import Any

import pytest

from worker.app import vmhost_of_queue, vmhost_queue
from worker.db.claims import ClaimRecord
from worker.db.sweep import PendingClaim
from worker.devkit.reservations import make_reservation
from worker.dispatcher import SweepVerdict, sweep_verdict
from worker.tasks import delegated, provisioning
from worker.tasks.deps import TaskDeps
from worker.tasks.host_check import WrongHostError, check_host


def test_vcl_call_is_not_retried_automatically() -> None:
    task = delegated.call
    assert task.autoretry_for == ()  # a busy computer or a transient error is answered, not retried
    assert task.acks_late and task.reject_on_worker_lost  # redelivered after a child dies (bounded)
    for claimed in (provisioning.load, provisioning.capture):
        assert claimed.autoretry_for == provisioning.TRANSIENT_ERRORS  # the claimed tasks keep theirs


def test_the_queue_names_the_host() -> None:
    assert vmhost_of_queue(vmhost_queue("kvmhost1")) == "kvmhost1"
    assert vmhost_of_queue("vcl.default") is None
    assert vmhost_of_queue(None) is None
    assert vmhost_of_queue("vmhost.") is None


def test_a_computer_on_another_host_is_refused() -> None:
    r = make_reservation()
    deps = TaskDeps(store=Any, settings=Any, kv=None, vmhost=r.vmhost_short_name)  # type: ignore[arg-type]
    check_host(deps, r)  # the right host: nothing raised
    check_host(TaskDeps(store=Any, settings=Any, kv=None), r)  # type: ignore[arg-type]  # unknown host
    elsewhere = TaskDeps(store=Any, settings=Any, kv=None, vmhost="otherhost")  # type: ignore[arg-type]
    with pytest.raises(WrongHostError, match="not on this worker's host otherhost") as caught:
        check_host(elsewhere, r)
    assert caught.value.right_host == r.vmhost_short_name


def _claim(age: float, requeued: int = 0) -> PendingClaim:
    record = ClaimRecord(1, "t-1", sent=True, requeued=requeued, info="", timestamp=None)
    return PendingClaim(1, 1, "new", 1, "kvmhost1", "VCL::Module::Provisioning::libvirt", record, age)


@pytest.mark.parametrize("state", ["STARTED", "RETRY", "PROGRESS"])
def test_a_running_claim_is_judged_only_when_its_worker_is_gone(state: str) -> None:
    assert sweep_verdict(_claim(500), state, 120, 9000) is SweepVerdict.WAIT
    assert sweep_verdict(_claim(500), state, 120, 9000, worker_gone=True) is SweepVerdict.REQUEUE
    assert sweep_verdict(_claim(500, requeued=1), state, 120, 9000, worker_gone=True) is SweepVerdict.FAIL
