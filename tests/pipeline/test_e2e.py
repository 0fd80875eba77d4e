"""End to end on the real stack: Redis broker, a prefork `celery worker` subprocess on the host queue,
MariaDB loaded from vcl.sql and seeded as the web front end does, libvirtd running real domains."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
import requests

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.commands import venv_command
from worker.devkit.images import qemu_img_info, sha256
from worker.devkit.stack import Stack
from worker.dispatcher import dispatch_once

from .conftest import lock_kv

pytestmark = pytest.mark.timeout(900)


def dispatch_and_wait(stack: Stack, timeout: float = 300) -> tuple[Any, dict[str, Any]]:
    done = dispatch_once(
        stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=lock_kv(stack)
    )
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == 1, done
    d = enqueued[0]
    assert d.queue == stack.queue
    value = stack.app.AsyncResult(d.task_id).get(timeout=timeout, propagate=True)
    return d, value


def domains_of(stack: Stack, short_name: str) -> list[libvirt.virDomain]:
    conn = stack.conn()
    try:
        return [d for d in conn.listAllDomains() if d.name().startswith(short_name + "_")]
    finally:
        pass


def loadlog_names(stack: Stack, reservation_id: int) -> list[str]:
    return [e.loadstatename for e in stack.store.loadlog(reservation_id)]


@pytest.fixture(scope="module")
def flower(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    port = 25555
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    proc = subprocess.Popen(
        [venv_command("celery"), "-A", "worker.app", "flower", f"--port={port}", "--address=127.0.0.1"],
        # Flower 2 serves its HTTP API only with auth configured or this explicit opt-in.
        env={**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(60):
        try:
            if requests.get(f"{url}/api/workers", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_full_cycle(stack: Stack, celery_worker_proc: CeleryWorker, flower: str) -> None:
    site = stack.site
    computer_id = site.computer_ids[0]
    short = stack.short(0)
    master = stack.datastore / f"{site.imagename}.qcow2"
    master_sum = sha256(master)

    # 1. new → load: domain running on an overlay of the master, request reserved.
    _req, res = stack.new_request(0)
    d, value = dispatch_and_wait(stack)
    assert d.task_name == "vcl.load"
    doms = domains_of(stack, short)
    assert len(doms) == 1
    assert doms[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING
    cow = Path(value["disks"]["cow"])
    info = qemu_img_info(cow)
    assert info["format"] == "qcow2"
    assert Path(info["full-backing-filename"]) == master
    assert info["backing-filename-format"] == "qcow2"
    assert sha256(master) == master_sum
    assert stack.store.request_states(d.request_id) == ("reserved", "new")
    names = loadlog_names(stack, res)
    stages = [
        n for n in names if n in {"startload", "transfervm", "vmsetupconfig", "startvm", "loadimagecomplete"}
    ]
    assert stages == ["startload", "transfervm", "vmsetupconfig", "startvm", "loadimagecomplete"]
    assert (
        stack.one("SELECT imagerevisionid FROM computer WHERE id=:id", id=computer_id)[0]
        == site.imagerevision_id
    )

    # 2. image → capture: write data into the COW (VM off), capture it, new master holds the data.
    dom = doms[0]
    dom.destroy()
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 8M 1M", str(cow)], check=True, capture_output=True
    )
    cap_req, _cap_res, new_rev = stack.capture_request(0)
    d, value = dispatch_and_wait(stack)
    assert d.task_name == "vcl.capture"
    new_master = Path(value["disks"]["master"])
    assert new_master.exists() and new_master != master
    new_info = qemu_img_info(new_master)
    assert "backing-filename" not in new_info
    for offset, pattern in (("8M", "0xab"), ("0", "0x5a")):
        check = subprocess.run(
            ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset} 1M", str(new_master)],
            capture_output=True,
            text=True,
        )
        assert "Pattern verification failed" not in check.stdout, check.stdout
    assert sha256(master) == master_sum
    assert domains_of(stack, short) == []
    assert not cow.exists()
    assert stack.store.request_states(cap_req) == ("complete", "image")
    rev = stack.one("SELECT deleted, imagename FROM imagerevision WHERE id=:id", id=new_rev)
    assert rev[0] == 0 and rev[1] == new_master.stem
    img = stack.one("SELECT deleted, size FROM image WHERE id=:id", id=site.image_id)
    assert img[0] == 0
    assert stack.store.computer_state(computer_id) == "reload"
    reload_req = stack.one(
        "SELECT r.id, s.name FROM request r JOIN state s ON s.id=r.stateid "
        "JOIN reservation v ON v.requestid=r.id WHERE v.imagerevisionid=:rev AND s.name='reload'",
        rev=new_rev,
    )
    assert reload_req[1] == "reload"

    # 3. reload → computer available, running on the new master.
    d, value = dispatch_and_wait(stack)
    assert d.task_name == "vcl.reload" and d.request_id == reload_req[0]
    assert stack.store.computer_state(computer_id) == "available"
    doms = domains_of(stack, short)
    assert len(doms) == 1 and doms[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert Path(qemu_img_info(value["disks"]["cow"])["full-backing-filename"]) == new_master

    # 4. tomaintenance → no domain, computer maintenance, vmhostid NULL.
    stack.maintenance_request(0)
    d, value = dispatch_and_wait(stack)
    assert d.task_name == "vcl.maintenance"
    assert domains_of(stack, short) == []
    comp = stack.one(
        "SELECT s.name, c.vmhostid FROM computer c JOIN state s ON s.id=c.stateid WHERE c.id=:id",
        id=computer_id,
    )
    assert comp[0] == "maintenance" and comp[1] is None
    assert list(stack.datastore.glob(f"{short}_*")) == []

    # Flower saw every task finish.
    time.sleep(2)
    tasks = requests.get(f"{flower}/api/tasks", timeout=10).json()
    finished = {t["name"] for t in tasks.values() if t.get("state") == "SUCCESS"}
    assert {"vcl.load", "vcl.capture", "vcl.reload", "vcl.maintenance"} <= finished


def test_celery_cli_inspect_and_call(stack: Stack, celery_worker_proc: CeleryWorker) -> None:
    out = subprocess.run(
        [
            venv_command("celery"),
            "-A",
            "worker.app",
            "inspect",
            "registered",
            "-d",
            celery_worker_proc.name,
            "--json",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for name in ("vcl.load", "vcl.reload", "vcl.capture", "vcl.maintenance"):
        assert name in out.stdout
    req, res = stack.new_request(1)
    # No --queue: the router finds the reservation's VM host queue in the VCL database.
    call = subprocess.run(
        [venv_command("celery"), "-A", "worker.app", "call", "vcl.load", "--args", f"[{res}]"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert call.returncode == 0, call.stderr
    task_id = call.stdout.strip().splitlines()[-1]
    value = stack.app.AsyncResult(task_id).get(timeout=300)
    assert value["request_state"] == "reserved"
    assert stack.store.request_states(req) == ("reserved", "new")


def test_duplicate_delivery_converges_and_never_overlaps(
    stack: Stack, celery_worker_proc: CeleryWorker
) -> None:
    short = stack.short(1)
    req, res = stack.new_request(1)
    # The same task delivered twice at once (two workers children, concurrency 2).
    first = stack.app.send_task("vcl.load", args=[res], queue=stack.queue)
    second = stack.app.send_task("vcl.load", args=[res], queue=stack.queue)
    results = [first.get(timeout=300), second.get(timeout=300)]
    assert stack.store.request_states(req) == ("reserved", "new")
    doms = domains_of(stack, short)
    assert len(doms) == 1 and doms[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert len(list(stack.datastore.glob(f"{short}_*.qcow2"))) == 1
    ran = [r for r in results if r.get("status") != "skipped"]
    assert ran, results
    # Exclusive sections of tasks that reached the lock never overlap.
    spans = sorted(
        (r["timings"]["locked_at"], r["timings"]["unlocked_at"])
        for r in results
        if "locked_at" in r.get("timings", {})
    )
    for (_a0, a1), (b0, _b1) in itertools.pairwise(spans):
        assert a1 <= b0, spans


def test_two_tasks_for_one_computer_are_serialised(stack: Stack, celery_worker_proc: CeleryWorker) -> None:
    """Two different requests for one computer (a reload right behind a load) run one after the other."""
    _r1, res1 = stack.new_request(1, "reload")
    _r2, res2 = stack.new_request(1, "reload")
    results: list[dict[str, Any]] = []

    def go(res: int) -> None:
        results.append(stack.app.send_task("vcl.reload", args=[res], queue=stack.queue).get(timeout=300))

    threads = [threading.Thread(target=go, args=(r,)) for r in (res1, res2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted((r["timings"]["locked_at"], r["timings"]["unlocked_at"]) for r in results)
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], spans
    assert len(domains_of(stack, stack.short(1))) == 1
