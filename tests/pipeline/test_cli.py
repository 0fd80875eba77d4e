"""The `vcl-worker` command on the real stack: enqueue --wait, status, dispatch --once, worker --vmhost."""

from __future__ import annotations

import subprocess
import time
import uuid

from sqlalchemy import text

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.commands import run_vcl_worker, venv_command
from worker.devkit.stack import Stack


def vcl_worker(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_vcl_worker(stack.env, *args, timeout=timeout)


def test_enqueue_wait_and_status(stack: Stack, celery_worker_proc: CeleryWorker) -> None:
    req, res = stack.new_request(1)
    out = vcl_worker(stack, "enqueue", "load", str(res), "--wait", "--timeout", "240")
    assert out.returncode == 0, out.stderr + out.stdout
    assert '"request_state": "reserved"' in out.stdout
    assert stack.store.request_states(req) == ("reserved", "new")

    status = vcl_worker(stack, "status", str(res))
    assert status.returncode == 0, status.stderr
    assert f"request {req} reserved/new" in status.stdout
    assert "SUCCESS" in status.stdout
    for stage in ("startload", "transfervm", "vmsetupconfig", "startvm", "loadimagecomplete"):
        assert stage in status.stdout

    missing = vcl_worker(stack, "status", "999999")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_enqueue_for_a_request_in_another_state_is_skipped(
    stack: Stack, celery_worker_proc: CeleryWorker
) -> None:
    """A reservation whose request is not in the task's state is skipped, not loaded twice."""
    req, res = stack.new_request(1, "reserved", laststate="new")
    out = vcl_worker(stack, "enqueue", "load", str(res), "--wait", "--timeout", "120")
    assert out.returncode == 0, out.stderr
    assert '"status": "skipped"' in out.stdout
    assert stack.store.request_states(req) == ("reserved", "new")


def test_dispatch_once(stack: Stack, celery_worker_proc: CeleryWorker) -> None:
    site = stack.site
    req, res = stack.new_request(1, "reload")
    out = vcl_worker(stack, "dispatch", "--once", "--management-node", str(site.management_node_id))
    assert out.returncode == 0, out.stderr
    assert f"request {req} reservation {res} [reload] enqueued vcl.reload on {stack.queue}" in out.stdout
    deadline = time.monotonic() + 240
    while stack.store.request_states(req) != ("complete", "reload") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.store.request_states(req) == ("complete", "reload")
    assert stack.store.computer_state(site.computer_ids[1]) == "available"


def test_worker_command_consumes_the_host_queue(stack: Stack) -> None:
    host = f"cli{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [venv_command("vcl-worker"), "worker", "--vmhost", host, "--concurrency", "1"],
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        queues: list[str] = []
        while time.monotonic() < deadline and not queues:
            active = stack.app.control.inspect(destination=[f"vcl@{host}"], timeout=1.0).active_queues() or {}
            queues = [q["name"] for q in active.get(f"vcl@{host}", [])]
        assert queues == [f"vmhost.{host}"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_enqueue_failure_exits_nonzero(stack: Stack, celery_worker_proc: CeleryWorker) -> None:
    """A revision whose master exists nowhere fails the request (failed/new) and the command exits 1."""
    site = stack.site
    with stack.sf.begin() as s:
        rev_id = s.execute(
            text(
                "INSERT INTO imagerevision (imageid, revision, userid, datecreated, deleted, production, "
                "imagename) VALUES (:img, 77, 1, NOW(), 0, 0, :name)"
            ),
            {"img": site.image_id, "name": f"vmwarelinux-missing{stack.run_id}-v77"},
        ).lastrowid
    req, res = stack.new_request(1, imagerevision_id=rev_id)
    out = vcl_worker(stack, "enqueue", "load", str(res), "--wait", "--timeout", "120")
    assert out.returncode == 1
    assert "ImageNotFoundError" in out.stderr
    # A permanent error is never retried.
    task_id = out.stdout.split("task ", 1)[1].split()[0]
    failed = stack.app.AsyncResult(task_id)
    assert failed.state == "FAILURE"
    assert failed.retries == 0
    assert stack.store.request_states(req) == ("failed", "new")
    names = [e.loadstatename for e in stack.store.loadlog(res)]
    assert "loadimagefailed" in names and "failed" in names
