"""Masters and paths (issue 12) through the real stack: Celery worker, MariaDB, libvirtd, qemu-img.

Injections (each counted in "faults injected"):
* ``-v1``/``-v10``: the repository holds ``<name>-v1`` and ``<name>-v10`` (and ``-v11``), the datastore no
  master; a ``vcl.load`` of ``-v1`` must copy exactly ``-v1`` (a prefix match joins them all).
* a vmprofile path outside the roots: datastorepath, vmpath and repositorypath in turn set to a
  directory outside ``VCL_ALLOWED_ROOTS`` and to a symlink under the datastore pointing there; the load
  must fail the request with nothing created, walked or deleted there ("files touched outside the roots").
* ``reap --apply`` for a ``--vmhost`` that is not this host, while a task holds the computer lock, and
  with the orphan turned live between the listing and the removal.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.devkit.commands import run_vcl_worker
from worker.devkit.images import make_master, sha256
from worker.devkit.libvirt_env import SYSTEM_URI
from worker.hypervisors import qemuimg
from worker.hypervisors.host import LibvirtHost
from worker.reaper import RECHECKED_LIVE, apply_plan, computer_locks, plan_reap
from worker.tasks.locks import computer_lock

from .conftest import COUNTERS, FaultStack, Worker, running_worker, send

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
INDEX = 28  # its own computer: test_bad_input leaves requests on 12 that make the reaper keep it
OUTSIDE = "files touched outside the roots"
COUNTERS.setdefault(OUTSIDE, 0)


@pytest.fixture(scope="module")
def worker(fstack: FaultStack) -> Iterator[Worker]:
    with running_worker(fstack, concurrency=1) as w:
        yield w


@pytest.fixture
def computer(fstack: FaultStack) -> Iterator[int]:
    def reset() -> None:
        fstack.reset_computer(INDEX)
        fstack.execute(
            "UPDATE computer SET stateid=(SELECT id FROM state WHERE name='available') WHERE id=:c",
            c=fstack.site.computer_ids[INDEX],
        )

    reset()
    yield fstack.site.computer_ids[INDEX]
    reset()


def test_v1_is_loaded_alone_never_joined_with_v10(fstack: FaultStack, worker: Worker, computer: int) -> None:
    repo = fstack.repository
    assert repo is not None
    base = f"vmwarelinux-Paths{fstack.run_id}"
    names = {f"{base}-v1": (0x11, 64), f"{base}-v10": (0x22, 32), f"{base}-v11": (0x33, 32)}
    for name, (pattern, size) in names.items():
        make_master(repo / name / f"{name}.qcow2", size_mb=size, pattern=pattern, mode=0o444)
    image_id, rev_id = fstack.add_image(f"Paths {fstack.run_id}", f"{base}-v1")
    master = fstack.datastore / f"{base}-v1.qcow2"
    sums = {p: sha256(p) for p in repo.rglob("*.qcow2")}
    COUNTERS["faults injected"] += 1
    try:
        res = fstack.new_reservation(INDEX, image_id, rev_id)
        result = send(fstack, "vcl.load", res).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "done", f"{result!r}\n{worker.tail(4000)}"
        assert qemuimg.info(str(master), "qcow2").virtual_size == 64 * 1024 * 1024
        assert qemuimg.compare(str(master), str(repo / f"{base}-v1" / f"{base}-v1.qcow2"), "qcow2", "qcow2")
        assert {p: sha256(p) for p in sums} == sums  # the repository is only read
        assert len(fstack.domains(fstack.short(INDEX))) == 1
    finally:
        fstack.reset_computer(INDEX)
        master.unlink(missing_ok=True)


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``path`` with its size and mtime (a walk or a write changes nothing here, a
    create or delete does)."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in [path, *path.rglob("*")]}


@pytest.mark.parametrize("column", ["datastorepath", "vmpath", "repositorypath"])
def test_vmprofile_path_outside_the_roots_fails_the_request(
    fstack: FaultStack, worker: Worker, computer: int, column: str
) -> None:
    outside = Path(tempfile.mkdtemp(prefix="vcl-outside-"))
    (outside / f"{fstack.short(INDEX)}_1-v1.qcow2").write_text("not ours: named like an overlay")
    (outside / "vms").mkdir()
    link = fstack.datastore / f"escape-{column}"
    link.symlink_to(outside)
    vp = fstack.site.vmprofile_id
    saved = fstack.one(f"SELECT {column} FROM vmprofile WHERE id=:v", v=vp)[0]
    try:
        for bad in (str(outside), str(link)):
            fstack.execute(f"UPDATE vmprofile SET {column}=:p WHERE id=:v", p=bad, v=vp)
            before = _snapshot(outside)
            COUNTERS["faults injected"] += 1
            COUNTERS["bad inputs tried"] += 1
            res = fstack.new_reservation(INDEX)
            request_id = fstack.store.reservation_request(res)[0]  # type: ignore[index]
            result = send(fstack, "vcl.load", res).get(timeout=120, propagate=False)
            after = _snapshot(outside)
            COUNTERS[OUTSIDE] += len(set(before.items()) ^ set(after.items()))
            assert isinstance(result, Exception), result
            assert "outside the allowed roots" in str(result) and column in str(result), result
            assert fstack.store.request_states(request_id) == ("failed", "new")
            assert after == before
            assert fstack.domains(fstack.short(INDEX)) == []
            COUNTERS["bad inputs rejected"] += 1
            fstack.execute(
                "UPDATE computer SET stateid=(SELECT id FROM state WHERE name='available') WHERE id=:c",
                c=computer,
            )
    finally:
        fstack.execute(f"UPDATE vmprofile SET {column}=:p WHERE id=:v", p=saved, v=vp)
        link.unlink()
        (outside / f"{fstack.short(INDEX)}_1-v1.qcow2").unlink()
        (outside / "vms").rmdir()
        outside.rmdir()


def _reap(fs: FaultStack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_vcl_worker({**fs.env, **env}, "reap", "--vmhost", fs.vmhost, *args, timeout=120)


def test_reap_apply_only_on_this_host_and_under_the_computer_lock(fstack: FaultStack, computer: int) -> None:
    orphan = fstack.datastore / f"{fstack.short(INDEX)}_{fstack.site.image_id}-v7.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(fstack.master), str(orphan)],
        check=True,
    )
    alias = {"VCL_HOST_ALIASES": fstack.vmhost}  # the stack's VM host name stands for this machine
    try:
        # 1. --vmhost names another host: refused before anything is listed or removed
        COUNTERS["faults injected"] += 1
        proc = _reap(fstack, "--apply")
        assert proc.returncode == 2 and "is not this host" in proc.stdout, proc.stdout + proc.stderr
        assert orphan.exists()
        # 2. a task holds the computer: the orphan is skipped, not removed behind the task's back
        COUNTERS["faults injected"] += 1
        client = redis.Redis.from_url(fstack.settings.lock_redis_url)
        with computer_lock(client, computer, ttl=120, wait=5):
            proc = _reap(fstack, "--apply", **alias)
        assert proc.returncode == 0 and f"kept {orphan} (not removed: computer" in proc.stdout, proc.stdout
        assert orphan.exists()
        # 3. listed as an orphan, then the computer gets an image request: re-checked under the lock, kept
        COUNTERS["faults injected"] += 1
        host = LibvirtHost(SYSTEM_URI)
        try:
            plan = plan_reap(fstack.store, host, fstack.vmhost, fstack.settings.roots)
            assert str(orphan) in [o.name for o in plan.overlays]
            request_id, _res, _rev = fstack.capture_request(INDEX)
            try:
                removed = apply_plan(
                    plan,
                    host,
                    lambda: plan_reap(fstack.store, host, fstack.vmhost, fstack.settings.roots),
                    lambda ids: computer_locks(client, ids),
                )
            finally:
                fstack.execute(
                    "UPDATE request SET stateid=(SELECT id FROM state WHERE name='complete') WHERE id=:r",
                    r=request_id,
                )
        finally:
            host.close()
        assert removed == [] and orphan.exists()
        assert (str(orphan), RECHECKED_LIVE) in plan.kept
        # 4. on this host, lock free, still an orphan: removed
        proc = _reap(fstack, "--apply", **alias)
        assert proc.returncode == 0 and f"removed overlay {orphan}" in proc.stdout, proc.stdout + proc.stderr
        assert not orphan.exists()
    finally:
        orphan.unlink(missing_ok=True)
