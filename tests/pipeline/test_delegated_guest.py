"""Delegated calls (``vcl.call``'s :func:`run_call`, in-process as in tests/vcld/test_delegated.py) on
the real test guest, where vcld's OS module does the guest's part: what the worker leaves to it.

* ``load`` waits for the guest to answer SSH (and pins its host key) but runs no post-load of the
  worker's: vcld's ``os->post_load()`` follows it, as at the end of libvirt.pm's load. A standalone
  ``vcl.load`` from the dispatcher still runs the worker's post-load.
* ``node_status`` answers VCL's Provisioning.pm verdicts: RELOAD for a domain that is off or a guest
  that does not answer or has no currentimage.txt, POST_LOAD for this revision without post-load
  recorded, READY once post-load is recorded (vcld's OS module's ``set_post_load_status`` line).
* ``capture`` of a guest vcld's OS module already shut down (its ``shutdown()`` powers the guest off
  and polls the bridge's ``power_status``) captures the domain as it is, without a shutdown of its own.

Every run writes no request or computer state, so the dispatcher runs only before any delegated
request exists (it would claim them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.delegated.operations import LIBVIRT_LOAD_ROWS, run_call
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.dispatcher import dispatch_once
from worker.hypervisors import postload
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin
from worker.hypervisors.postload import GuestShell
from worker.tasks.deps import TaskDeps

from .test_real_guest import private_ip, shell

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]

TASK_TIMEOUT = 400
# Broker, results and locks in Redis DB 6: no other suite's (the pipeline's 11-13 are flushed by its
# stacks; computer ids, and so lock keys, repeat across stacks).
REDIS_DBS = (6, 6, 6)
# dropbear's listener only (its parent is init); this session's own dropbear child stays.
KILL_SSHD_LISTENER = (
    "for p in $(pidof dropbear); do [ $(cut -d' ' -f4 /proc/$p/stat) = 1 ] && kill $p; done; true"
)


@pytest.fixture(scope="module")
def dstack() -> Iterator[Stack]:
    with open_stack(StackConfig(tag="dg", vms=2, guest=True, redis_dbs=REDIS_DBS), Stack) as s:
        yield s


def _call(stack: Stack, method: str, reservation_id: int, *args: str) -> dict[str, Any]:
    deps = TaskDeps(
        store=stack.store, settings=stack.settings, kv=redis.Redis.from_url(stack.settings.lock_redis_url)
    )
    reply = run_call(method, reservation_id, args, deps=deps).as_dict()
    assert reply["ok"], reply
    return reply


def _shell(stack: Stack, index: int) -> GuestShell:
    return shell(stack, private_ip(stack, index))


def _currentimage(stack: Stack, index: int) -> str | None:
    with _shell(stack, index) as sh:
        status, out = sh.run(["cat", postload.CURRENTIMAGE_PATH])
    return out if status == 0 else None


def _delegated_load(stack: Stack, index: int) -> tuple[int, dict[str, Any]]:
    stack.reset_computer(index)
    _req, res = stack.new_request(index)
    loaded = _call(stack, "load", res)
    assert loaded["result"] == 1
    return res, loaded


def _standalone_load(stack: Stack, index: int, log_dir: Path) -> tuple[int, dict[str, Any]]:
    """``vcl.load`` through the dispatcher and a prefork worker: (reservation id, task result)."""
    stack.reset_computer(index)
    _req, res = stack.new_request(index)
    kv = redis.Redis.from_url(stack.settings.lock_redis_url)
    with stack.running_worker(log_dir, concurrency=1) as worker:
        done = dispatch_once(
            stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=kv
        )
        enqueued = [d for d in done if d.action == "enqueued"]
        assert [(d.task_name, d.reservation_id) for d in enqueued] == [("vcl.load", res)], done
        value = stack.wait_success(str(enqueued[0].task_id), worker, timeout=TASK_TIMEOUT)
    assert value["status"] == "done" and str(value["banner"]).startswith("SSH-2.0-"), value
    return res, value


def test_delegated_load_leaves_post_load_to_vcld_standalone_runs_it(dstack: Stack, tmp_path: Path) -> None:
    # Standalone first: the dispatcher would claim the delegated call's request, which stays `new`.
    std_res, std = _standalone_load(dstack, 1, tmp_path)
    assert "core_post_load" in std["timings"] and "core_host_key" not in std["timings"], std["timings"]
    std_image = _currentimage(dstack, 1)
    assert std_image is not None and postload.POST_LOAD_MARK in postload.parse_currentimage(std_image)
    # That guest has post-load recorded with its revision: READY, the delegated method says too.
    assert _call(dstack, "node_status", std_res)["result"] == "READY"

    res, loaded = _delegated_load(dstack, 0)
    timings = loaded["timings"]
    # The guest answered SSH and its host key was pinned (a handshake), but no post-load ran.
    assert "core_guest_ready" in timings and "core_host_key" in timings, timings
    assert "core_post_load" not in timings, timings
    assert "answered SSH-2.0-" in loaded["detail"], loaded
    # Nothing of post-load in the guest: no currentimage.txt (vcld's OS module and image own it).
    assert _currentimage(dstack, 0) is None
    # Only libvirt.pm's own loadlog rows (no machinebooted: vcld's wait_for_response writes it).
    assert [e.loadstatename for e in dstack.store.loadlog(res)] == list(LIBVIRT_LOAD_ROWS)
    r = dstack.store.load_reservation(res)
    assert HostKeyPin.for_reservation(dstack.settings, r, HostKeyMode.VERIFY).pinned() is not None


def test_node_status_answers_vcls_verdicts_on_the_real_guest(dstack: Stack) -> None:
    res, _ = _delegated_load(dstack, 0)
    rev = dstack.site.imagerevision_id

    def status() -> str:
        return str(_call(dstack, "node_status", res)["result"])

    # Answers, but no currentimage.txt (VCL: "unable to retrieve imagerevision ID"): RELOAD.
    assert status() == "RELOAD"
    # This revision, as VCL's image carries it, without post-load recorded: POST_LOAD.
    with _shell(dstack, 0) as sh:
        sh.check(["tee", postload.CURRENTIMAGE_PATH], stdin=f"image\nimagerevision_id={rev}\n")
    assert status() == "POST_LOAD"
    # vcld's OS module's set_post_load_status line: READY.
    with _shell(dstack, 0) as sh:
        sh.check(["sh", "-c", f"echo '{postload.POST_LOAD_MARK}=success' >> {postload.CURRENTIMAGE_PATH}"])
    assert status() == "READY"
    # The domain runs but the guest stops answering SSH (its sshd gone): RELOAD, not POST_LOAD.
    with _shell(dstack, 0) as sh:
        sh.check(["sh", "-c", KILL_SSHD_LISTENER])
    assert _call(dstack, "power_status", res)["result"] == "on"
    assert status() == "RELOAD"
    # The domain is off: RELOAD.
    assert _call(dstack, "power_off", res)["result"] == 1
    assert status() == "RELOAD"


def test_capture_of_a_guest_the_os_module_shut_down(dstack: Stack) -> None:
    _res, _ = _delegated_load(dstack, 0)
    _req, cap_res, rev_id = dstack.capture_request(0)
    assert _call(dstack, "does_image_exist", cap_res)["result"] == 0
    # vcld's Linux.pm shutdown: `shutdown -h now` in the guest, then the provisioning module's
    # power_status until it says off (wait_for_power_off).
    with _shell(dstack, 0) as sh:
        sh.run(["sh", "-c", "poweroff >/dev/null 2>&1 &"])
    deadline = time.monotonic() + 120
    while _call(dstack, "power_status", cap_res)["result"] != "off":
        assert time.monotonic() < deadline, "the guest did not power off"
        time.sleep(1)
    captured = _call(dstack, "capture", cap_res)
    assert captured["result"] == 1
    assert captured["detail"].endswith("it was off already"), captured
    assert captured["timings"]["core_shutdown"] < 1.0, captured["timings"]
    name = dstack.one("SELECT imagerevision.imagename FROM imagerevision WHERE id = :i", i=rev_id)[0]
    assert (dstack.datastore / f"{name}.qcow2").is_file()
    assert dstack.domains(dstack.short(0)) == []  # image state: the captured domain is removed


def test_capture_of_a_running_guest_shuts_it_down_itself(dstack: Stack) -> None:
    """No OS module, or its shutdown failed: the worker's ACPI shutdown (the guest honours it)."""
    _res, _ = _delegated_load(dstack, 1)
    _req, cap_res, _rev_id = dstack.capture_request(1)
    captured = _call(dstack, "capture", cap_res)
    assert captured["detail"].endswith("the worker shut it down"), captured
    assert captured["timings"]["core_shutdown"] > 0.0, captured["timings"]
