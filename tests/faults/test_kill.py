"""``kill -9`` of the worker child at 11 points of a load: after redelivery every reservation is
loaded exactly once (one running domain, one overlay, reserved/new, computer reserved)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker.devkit.images import sha256

from .conftest import COUNTERS, FaultStack, check_loaded, running_worker, send

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# Order matters a little: computers are reused (index % 4), so later points find an earlier
# reservation's domain and overlay to delete first (before_delete_existing, after the master copy).
FAILPOINTS = [
    "load.claimed",
    "load.started",
    "core.before_pre_define",
    "core.master_copy",
    "core.before_delete_existing",
    "core.after_cow",
    "core.before_define",
    "core.after_define",
    "core.after_start",
    "load.before_finish",
    "load.finished",
]


@pytest.fixture(scope="module")
def repo_image(fstack: FaultStack) -> tuple[int, int, Path, Path]:
    """An image whose master is only in the repository (256 MiB of data, so the copy takes a while)."""
    name = f"vmwarelinux-FaultRepo{fstack.run_id}-v0"
    image_id, rev_id = fstack.add_image(f"Fault Repo {fstack.run_id}", name)
    src_dir = fstack.repository / name
    src_dir.mkdir(mode=0o755)
    src = src_dir / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "512M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 0 256M", str(src)], check=True, capture_output=True
    )
    return image_id, rev_id, src, fstack.datastore / f"{name}.qcow2"


@pytest.mark.parametrize("point", FAILPOINTS)
def test_kill_9_then_redelivery_loads_exactly_once(
    fstack: FaultStack, repo_image: tuple[int, int, Path, Path], point: str
) -> None:
    index = FAILPOINTS.index(point) % 4
    marker = fstack.tmp / f"fired-{point}"
    master = fstack.master
    if point == "core.master_copy":
        image_id, rev_id, src, master = repo_image
        src_sum = sha256(src)
        res = fstack.new_reservation(index, image_id, rev_id)
    else:
        res = fstack.new_reservation(index)
    # The killed child's computer lock is its delivery's: the redelivery waits for it to end with
    # its lease (a short one here), it never adopts it.
    with running_worker(
        fstack, concurrency=1, VCL_FAILPOINT=point, VCL_FAILPOINT_MARKER=str(marker), VCL_LOCK_LEASE="9"
    ) as worker:
        result = send(fstack, "vcl.load", res).get(timeout=240, propagate=False)
        log = worker.tail(20000)
    assert marker.exists(), f"failpoint {point} never fired:\n{log}"
    COUNTERS["faults injected"] += 1
    assert "WorkerLostError" in log or "SIGKILL" in log or "Signal 9" in log, log
    assert isinstance(result, dict), f"{result!r}\n{log}"
    assert result["status"] in ("done", "skipped"), result
    if point == "load.finished":
        assert result["status"] == "skipped"  # the first delivery had recorded everything
    check_loaded(fstack, res, index, master=master)
    if point == "core.master_copy":
        # The copy was restarted from scratch: the master is complete and identical to the source,
        # no partial file is left, and the repository file is untouched.
        assert sha256(src) == src_sum
        cmp = subprocess.run(["qemu-img", "compare", "-U", str(src), str(master)], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        assert not list(fstack.datastore.glob("*.part"))
        fstack.master_sums[str(master)] = sha256(master)
        fstack.master_sums[str(src)] = src_sum
