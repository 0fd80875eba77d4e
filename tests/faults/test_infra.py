"""Infrastructure faults on the real stack: libvirtd, MariaDB and Redis restarted mid-run, a full
datastore, and two loads for one computer at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from worker.app import app, vmhost_queue
from worker.db.seed import SiteSpec, seed_site
from worker.devkit.commands import REPO_ROOT
from worker.devkit.services import wait_until
from worker.devkit.site import SiteRequests

from .conftest import (
    COUNTERS,
    FaultStack,
    check_loaded,
    loadlog,
    make_fault_master,
    orphan_overlays,
    running_worker,
    send,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]


def _wait_started(results: list[Any], timeout: float = 60) -> None:
    wait_until(lambda: any(r.state in ("STARTED", "PROGRESS", "SUCCESS") for r in results), timeout, "a task")


def _dispose(fs: FaultStack) -> None:
    fs.sf.kw["bind"].dispose()


# ---------------------------------------------------------------------- libvirtd


def _libvirtd_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
        if Path(f"/proc/{pid}").exists():
            return pid
    return None


def _libvirtd_up() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0


def test_libvirtd_restart_during_loads(fstack: FaultStack) -> None:
    indexes = [4, 5, 6, 7, 8, 9]
    reservations = [fstack.new_reservation(i) for i in indexes]
    with running_worker(fstack, concurrency=2) as worker:
        results = [send(fstack, "vcl.load", r) for r in reservations]
        _wait_started(results)
        pid = _libvirtd_pid()
        assert pid is not None, "libvirtd is not running (no /run/libvirtd.pid)"
        try:
            os.kill(pid, signal.SIGTERM)  # the daemon we restart, by its pid; domains survive
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "libvirtd to exit")
            COUNTERS["faults injected"] += 1
            time.sleep(3)
        finally:
            if _libvirtd_pid() is None:  # the way make setup starts it (under tini without systemd)
                subprocess.run([str(REPO_ROOT / "scripts" / "start-libvirtd.sh")], check=True)
            wait_until(_libvirtd_up, 60, "libvirtd to answer")
        values = [r.get(timeout=300, propagate=False) for r in results]
        log = worker.tail(200000)
    bad = [v for v in values if not (isinstance(v, dict) and v["status"] == "done")]
    assert not bad, (bad, log[-5000:])
    assert "transient error, retry" in log, "no task hit the libvirtd outage"
    for res, i in zip(reservations, indexes, strict=True):
        check_loaded(fstack, res, i)


# ---------------------------------------------------------------------- MariaDB


def test_mariadb_restart_during_loads(fstack: FaultStack) -> None:
    indexes = [4, 5, 6]
    reservations = [fstack.new_reservation(i) for i in indexes]
    with running_worker(fstack, concurrency=2) as worker:
        results = [send(fstack, "vcl.load", r) for r in reservations]
        _wait_started(results)
        try:
            fstack.mariadb.stop()
            COUNTERS["faults injected"] += 1
            time.sleep(6)  # longer than a load: the running loads' final transitions hit the outage
        finally:
            fstack.mariadb.start()
        _dispose(fstack)
        values = [r.get(timeout=300, propagate=False) for r in results]
        log = worker.tail(200000)
    assert all(isinstance(v, dict) and v["status"] == "done" for v in values), (values, log[-5000:])
    assert "transient error, retry" in log, "no task hit the MariaDB outage"
    for res, i in zip(reservations, indexes, strict=True):
        check_loaded(fstack, res, i)  # one loadimagecomplete/nodeready each: no half transition


# ---------------------------------------------------------------------- Redis


def test_redis_crash_keeps_enqueued_task_and_worker_reconnects(fstack: FaultStack) -> None:
    """A task enqueued before Redis is SIGKILLed survives (AOF, appendfsync everysec) and the
    running worker reconnects and runs it."""
    index = 10
    res = fstack.new_reservation(index)
    parked = f"faults.parked.{fstack.run_id}"
    with running_worker(fstack, concurrency=1) as worker:
        result = send(fstack, "vcl.load", res, queue=parked)  # no consumer yet: stays in Redis
        time.sleep(2.5)  # > 1 s: appendfsync everysec has written it to the AOF
        fstack.redis.crash()
        COUNTERS["faults injected"] += 1
        time.sleep(1)
        fstack.redis.start()

        def add_consumer() -> bool:
            replies = app.control.add_consumer(parked, destination=[worker.name], reply=True, timeout=2)
            return bool(replies)

        wait_until(add_consumer, 90, "the worker to reconnect and consume the parked queue", interval=1)
        value = None

        def done() -> bool:
            nonlocal value
            value = result.get(timeout=5, propagate=False)
            return True

        wait_until(done, 180, "the parked task", interval=1)
        log = worker.tail(100000)
    assert isinstance(value, dict) and value["status"] == "done", (value, log[-4000:])
    check_loaded(fstack, res, index)


# ---------------------------------------------------------------------- two loads, one computer


def test_two_loads_for_one_computer_are_serialised(fstack: FaultStack) -> None:
    index = 11
    res_a = fstack.new_reservation(index)
    res_b = fstack.new_reservation(index)
    with running_worker(fstack, concurrency=3):
        results = [send(fstack, "vcl.load", r) for r in (res_a, res_b, res_a)]  # + a duplicate
        values = [r.get(timeout=300, propagate=False) for r in results]
    assert all(isinstance(v, dict) for v in values), values
    spans = sorted(
        (v["timings"]["locked_at"], v["timings"]["unlocked_at"]) for v in values if v["status"] == "done"
    )
    assert len(spans) == 2, values  # the duplicate delivery was skipped, both reservations loaded
    assert spans[0][1] <= spans[1][0], f"exclusive sections overlap: {spans}"
    assert [v["status"] for v in values].count("skipped") == 1
    for res in (res_a, res_b):
        check_loaded(fstack, res, index)


# ---------------------------------------------------------------------- datastore full


def test_datastore_full_fails_cleanly(fstack: FaultStack) -> None:
    from worker.devkit.images import sha256

    rid = fstack.run_id
    full = Path(f"/var/lib/libvirt/images/vcl-worker-faults-{rid}-full")
    full.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64M,mode=0755", f"vclfull{rid}", str(full)], check=True
    )
    try:
        spec = SiteSpec(
            datastore_path=str(full), vm_path=str(full), repository_path=str(fstack.repository),
            virtualswitch0=fstack.network, virtualswitch1=fstack.network,
            vmhost_hostname=f"{fstack.vmhost}f.example.org", management_node_hostname=f"mnf{rid}.example.org",
            vm_hostnames=tuple(f"flt{rid}f{i}.example.org" for i in range(3)),
            image_prettyname=f"Fault Full {rid}", image_minram=256, mac_seed=0x72,
            profile_name=f"KVM full {rid}",
        )  # fmt: skip
        site = seed_site(fstack.sf, spec)
        master = full / f"{site.imagename}.qcow2"
        make_fault_master(master)
        master_sum = sha256(master)
        big_name = f"vmwarelinux-FaultBig{rid}-v0"
        big_image, big_rev = fstack.add_image(f"Fault Big {rid}", big_name)
        (fstack.repository / big_name).mkdir(mode=0o755)
        big_src = fstack.repository / big_name / f"{big_name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big_src), "256M"], check=True)
        write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 128M", str(big_src)]
        subprocess.run(write, check=True, capture_output=True)
        queue2 = vmhost_queue(f"{fstack.vmhost}f")

        def request(ci: int, image: int, rev: int) -> int:
            return SiteRequests(sf=fstack.sf, site=site).new_reservation(ci, image, rev)

        def used() -> int:
            st = os.statvfs(full)
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        def domain_running(short: str) -> bool:
            c = libvirt.open("qemu:///system")
            try:
                doms = [d for d in c.listAllDomains() if d.name().startswith(short + "_")]
                return len(doms) == 1 and doms[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING
            finally:
                c.close()

        with running_worker(fstack, queues=[queue2], concurrency=2):
            bystander = request(0, site.image_id, site.imagerevision_id)
            v = send(fstack, "vcl.load", bystander, queue=queue2).get(timeout=120)
            assert v["status"] == "done", v
            before = used()
            victim = request(1, big_image, big_rev)
            failed = send(fstack, "vcl.load", victim, queue=queue2).get(timeout=120, propagate=False)
            COUNTERS["faults injected"] += 1
            after_fail = used()
            later = request(2, site.image_id, site.imagerevision_id)
            v2 = send(fstack, "vcl.load", later, queue=queue2).get(timeout=120)
        # a clear error, in the task result and in computerloadlog; request failed as vcld fails it
        assert isinstance(failed, Exception), failed
        assert "DatastoreFullError" in str(failed) and "No space left" in str(failed), str(failed)
        rows = fstack.store.loadlog(victim)
        assert any(e.loadstatename == "failed" and "No space left" in (e.additionalinfo or "") for e in rows)
        assert fstack.store.reservation_request(victim)[1:] == ("failed", "new")  # type: ignore[index]
        assert fstack.store.computer_state(site.computer_ids[1]) == "failed"
        # partial files removed: no .part, no master, no overlay of the victim; space given back
        assert sorted(p.name for p in full.iterdir() if p.suffix == ".part") == []
        assert not (full / f"{big_name}.qcow2").exists()
        assert not list(full.glob(f"flt{rid}f1_*"))
        assert after_fail <= before + 1024 * 1024, (before, after_fail)
        # other reservations unaffected
        assert domain_running(f"flt{rid}f0") and domain_running(f"flt{rid}f2")
        assert fstack.store.reservation_request(bystander)[1:] == ("reserved", "new")  # type: ignore[index]
        assert v2["status"] == "done"
        assert sha256(master) == master_sum
        assert loadlog(fstack, later).count("loadimagecomplete") == 1
        COUNTERS["reservations checked"] += 2
    finally:
        from worker.devkit.libvirt_env import cleanup_domains

        cleanup_domains(f"flt{rid}f")
        subprocess.run(["umount", str(full)], check=False)
        with contextlib.suppress(OSError):
            full.rmdir()
    assert orphan_overlays(fstack) == []
