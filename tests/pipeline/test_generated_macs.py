"""Generated MACs through the whole pipeline (issue 19): a vmprofile with ``eth0generated`` and
``eth1generated`` makes every load give the computer's NICs new MACs; the load task records them in
``computer.eth0macaddress``/``eth1macaddress``, so the capture task that follows (another Celery task,
which finds the computer's domain by those columns) finds and captures the very domain loaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.hypervisors.domain_xml import ParsedDomain

from .test_real_guest import dispatch_one

pytestmark = pytest.mark.timeout(900)
TASK_TIMEOUT = 300


@pytest.fixture(scope="module")
def mstack() -> Iterator[Stack]:
    config = StackConfig(tag="gm", vms=1, site={"eth0_generated": True, "eth1_generated": True})
    with open_stack(config, Stack) as s:
        yield s


@pytest.fixture(scope="module")
def mworker(mstack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    with mstack.running_worker(tmp_path_factory.mktemp("celery-gm")) as w:
        yield w


def _row_macs(stack: Stack, computer_id: int) -> tuple[str, str]:
    row = stack.one("SELECT eth0macaddress, eth1macaddress FROM computer WHERE id = :id", id=computer_id)
    return str(row[0]), str(row[1])


def test_generated_macs_are_recorded_and_capture_finds_the_domain(
    mstack: Stack, mworker: CeleryWorker
) -> None:
    cid, short = mstack.site.computer_ids[0], mstack.short(0)
    seeded = _row_macs(mstack, cid)

    mstack.new_request(0)
    loaded = mstack.wait_success(dispatch_one(mstack, "vcl.load")[1], mworker, timeout=TASK_TIMEOUT)
    domain = loaded["domain"]
    assert mstack.domains(short) == [domain]
    conn = mstack.conn()
    try:
        macs = ParsedDomain.parse(conn.lookupByName(domain).XMLDesc(0)).macs
    finally:
        conn.close()
    recorded = _row_macs(mstack, cid)
    assert list(recorded) == macs  # eth0, eth1 in order, as the domain has them
    assert not set(recorded) & set(seeded)  # generated, not the seeded row's
    assert all(m.startswith("52:54:00:") for m in recorded)

    # The capture (its own task, its own read of the reservation) finds the loaded domain by MAC.
    cap_req, _cap_res, _rev = mstack.capture_request(0)
    captured = mstack.wait_success(dispatch_one(mstack, "vcl.capture")[1], mworker, timeout=TASK_TIMEOUT)
    assert captured["domain"] == domain
    assert mstack.store.request_states(cap_req) == ("complete", "image")
    assert mstack.domains(short) == []
