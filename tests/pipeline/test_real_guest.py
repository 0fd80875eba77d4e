"""The real guest through the whole pipeline: dispatcher → Redis → prefork ``celery worker`` → libvirt
(TCG here) → a Linux that boots from its overlay, takes ``computer.privateIPaddress`` by DHCP and
answers SSH with the management node's key.

What a VCL user would notice is checked *inside the guest*, over SSH: a load is SUCCESS only when the
guest answers, a ``reload`` of the same revision never hands the previous user's files on (also when
the worker child is killed in the middle of it and Celery redelivers the task), and a capture of the
live guest shuts it down by ACPI, so the next reload boots the captured disk with the user's work.
A fresh guest is proven in the guest, never by inode numbers (ext4 reuses them): the user's file on
the disk (synced) and the user's file in the guest's memory (``/tmp`` is a tmpfs) are both gone. That
holds for a cold boot and for a restored boot snapshot alike (a restore resumes the state saved
before any user logged in, so the kernel's ``boot_id`` may legitimately be the same).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from worker.app import vmhost_of_queue
from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.images import qemu_img_info, sha256
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.dispatcher import dispatch_once
from worker.hypervisors import postload
from worker.hypervisors.postload import GuestLogin, GuestShell

from .conftest import lock_kv

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]

TASK_TIMEOUT = 400
LOAD_STAGES = ["startload", "transfervm", "vmsetupconfig", "startvm", "machinebooted", "loadimagecomplete"]
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Points of a reload where the worker child is killed: before the core runs, and in the core before
# the old domain (with the user's disk) is deleted; both are reached whether the reload boots cold or
# restores a boot snapshot (core.after_start is on the cold path only).
KILL_POINTS = ["reload.started", "core.before_delete_existing"]


@pytest.fixture(scope="module")
def gstack() -> Iterator[Stack]:
    # Redis DBs 11-13 (the pipeline's), the built guest as master, a DHCP network pinning addresses.
    with open_stack(StackConfig(tag="rg", vms=2, guest=True), Stack) as s:
        yield s


@pytest.fixture(scope="module")
def gworker(gstack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    with gstack.running_worker(tmp_path_factory.mktemp("celery-guest")) as w:
        yield w


def private_ip(stack: Stack, index: int) -> str:
    ip = stack.one("SELECT privateIPaddress FROM computer WHERE id=:id", id=stack.site.computer_ids[index])[0]
    assert ip, "the guest stack seeds computer.privateIPaddress"
    return str(ip)


def shell(stack: Stack, address: str) -> GuestShell:
    assert stack.guest_image is not None
    return GuestShell(GuestLogin(address=address, key_files=(str(stack.guest_image.private_key),)))


def dispatch_one(stack: Stack, task_name: str) -> tuple[int, str]:
    """One dispatcher poll; exactly one request is enqueued: (request id, task id)."""
    done = dispatch_once(
        stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=lock_kv(stack)
    )
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == 1, done
    assert enqueued[0].task_name == task_name and enqueued[0].queue == stack.queue, enqueued[0]
    return enqueued[0].request_id, str(enqueued[0].task_id)


def wait_success(stack: Stack, task_id: str, worker: CeleryWorker) -> dict[str, Any]:
    return stack.wait_success(task_id, worker, timeout=TASK_TIMEOUT)


def assert_answered(stack: Stack, index: int, value: dict[str, Any]) -> None:
    """The task's summary says the guest answered SSH at the computer's private address."""
    assert value["status"] == "done", value
    assert value["address"] == private_ip(stack, index), value
    assert value["port"] == 22
    assert str(value["banner"]).startswith("SSH-2.0-"), value
    assert value["domain_type"] in ("kvm", "qemu")


def loadlog_stages(stack: Stack, reservation_id: int) -> list[str]:
    names = [e.loadstatename for e in stack.store.loadlog(reservation_id)]
    return [n for n in names if n in LOAD_STAGES]


def guest_facts(stack: Stack, address: str) -> dict[str, str]:
    """What the guest says about itself: its boot, hostname, loaded image and /root."""
    with shell(stack, address) as sh:
        return {
            "boot_id": sh.check(["cat", BOOT_ID]).strip(),
            "hostname": sh.check(["hostname"]).strip(),
            "currentimage": sh.check(["cat", postload.CURRENTIMAGE_PATH]),
            "root": sh.check(["ls", "-a", "/root"]),
        }


@dataclass(frozen=True)
class UserTrace:
    """What a user left in the guest: a file in /root (on the disk) and one in /tmp (in memory)."""

    disk_path: str
    memory_path: str
    content: str


def user_writes(stack: Stack, address: str, *, sync: bool = True) -> UserTrace:
    """A user leaves a file in /root (flushed to the disk unless ``sync`` is False) and one in /tmp."""
    tag, content = uuid.uuid4().hex[:8], uuid.uuid4().hex
    trace = UserTrace(f"/root/userdata-{tag}", f"/tmp/usersession-{tag}", content)
    with shell(stack, address) as sh:
        for path in (trace.disk_path, trace.memory_path):
            sh.check(["tee", path], stdin=content + "\n")
        if sync:
            sh.check(["sync"])
        assert sh.check(["cat", trace.disk_path]).strip() == content
        assert "tmpfs" in sh.check(["stat", "-f", "-c", "%T", "/tmp"])
    return trace


def file_in_guest(stack: Stack, address: str, path: str) -> str | None:
    with shell(stack, address) as sh:
        status, out = sh.run(["cat", path])
    return out.strip() if status == 0 else None


def load_for_user(stack: Stack, worker: CeleryWorker, index: int) -> tuple[int, str]:
    """A ``new`` reservation on computer ``index``, dispatched and loaded (vcld's shortcut may skip
    the load when the computer is available and already READY): (reservation id, address)."""
    _req, res = stack.new_request(index)
    _rid, task_id = dispatch_one(stack, "vcl.load")
    value = wait_success(stack, task_id, worker)
    assert value["request_state"] == "reserved", value
    address = private_ip(stack, index)
    if "skipped" not in value["detail"]:  # vcld's shortcut reports why it skipped; else it loaded
        assert_answered(stack, index, value)
    return res, address


def reload_wipes(stack: Stack, worker: CeleryWorker, index: int, task_id: str, res: int,
                 trace: UserTrace) -> dict[str, Any]:  # fmt: skip
    """The reload finished SUCCESS with a guest that answers and holds nothing the user left."""
    value = wait_success(stack, task_id, worker)
    assert_answered(stack, index, value)
    # The core load ran (its phases are reported): not skipped.
    assert any(k.startswith("core_") for k in value["timings"]), value
    # vcld's state_exit for a reload leaves only ``exited`` (machinebooted is checked on ``new``).
    assert [e.loadstatename for e in stack.store.loadlog(res)][-1:] == ["exited"]
    assert stack.store.computer_state(stack.site.computer_ids[index]) == "available"
    address = str(value["address"])
    after = guest_facts(stack, address)
    for path in (trace.disk_path, trace.memory_path):
        assert file_in_guest(stack, address, path) is None, f"{path} survived the reload"
    assert Path(trace.disk_path).name not in after["root"], after["root"]
    assert after["hostname"] == stack.short(index)
    recorded = postload.parse_currentimage(after["currentimage"])
    assert recorded["imagerevision_id"] == str(stack.site.imagerevision_id)
    assert postload.POST_LOAD_MARK in recorded
    return value


def test_new_request_loads_the_real_guest_and_it_answers_ssh(gstack: Stack, gworker: CeleryWorker) -> None:
    index = 0
    gstack.reset_computer(index)
    master_sum = sha256(gstack.master)
    req, res = gstack.new_request(index)
    _rid, task_id = dispatch_one(gstack, "vcl.load")
    value = wait_success(gstack, task_id, gworker)

    assert_answered(gstack, index, value)
    print(f"load: {value['address']} answered {value['banner']} ({value['domain_type']}), {value['timings']}")
    assert value["request_state"] == "reserved"
    assert gstack.store.request_states(req) == ("reserved", "new")
    assert loadlog_stages(gstack, res) == LOAD_STAGES
    cow = Path(value["disks"]["cow"])
    assert Path(str(qemu_img_info(cow)["full-backing-filename"])) == gstack.master
    doms = gstack.domains(gstack.short(index))
    assert doms == [value["domain"]]
    # Independently of the worker: the key logs in at that address, post-load ran in this guest.
    facts = guest_facts(gstack, value["address"])
    assert facts["hostname"] == gstack.short(index)
    recorded = postload.parse_currentimage(facts["currentimage"])
    assert recorded["imagerevision_id"] == str(gstack.site.imagerevision_id)
    assert recorded["computer_id"] == str(gstack.site.computer_ids[index])
    assert sha256(gstack.master) == master_sum


def test_reload_of_the_same_revision_wipes_the_users_files(gstack: Stack, gworker: CeleryWorker) -> None:
    index = 0
    _res, address = load_for_user(gstack, gworker, index)
    trace = user_writes(gstack, address)
    # vcld's reclaim.pm after the reservation: a reload of the same image revision.
    _req, res = gstack.new_request(index, "reload")
    _rid, task_id = dispatch_one(gstack, "vcl.reload")
    reload_wipes(gstack, gworker, index, task_id, res, trace)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_reload_killed_9_and_redelivered_still_wipes_the_disk(
    gstack: Stack, gworker: CeleryWorker, tmp_path: Path, point: str
) -> None:
    index = 0
    _res, address = load_for_user(gstack, gworker, index)
    trace = user_writes(gstack, address)
    _req, res = gstack.new_request(index, "reload")
    marker = tmp_path / "fired"
    # A worker of its own (its child kills itself once at ``point``) on a queue of its own.
    queue = f"{gstack.queue}.kill"
    # It serves the same VM host as the main worker (its queue's name is not vmhost.<host>).
    env = {
        "VCL_FAILPOINT": point,
        "VCL_FAILPOINT_MARKER": str(marker),
        "VCL_VMHOST": str(vmhost_of_queue(gstack.queue)),
    }
    with gstack.running_worker(tmp_path, concurrency=1, queues=[queue], env=env) as killer:
        task_id = gstack.send("vcl.reload", res, queue=queue).id
        value = reload_wipes(gstack, killer, index, task_id, res, trace)
        log = killer.tail(20000)
    assert marker.exists(), f"failpoint {point} never fired:\n{log}"
    assert "WorkerLostError" in log or "SIGKILL" in log or "Signal 9" in log, log
    assert gstack.domains(gstack.short(index)) == [value["domain"]]
    # One overlay for the computer (a boot snapshot's saved copy, ``*.bootsnap.qcow2``, is no overlay).
    overlays = [
        p for p in gstack.datastore.glob(f"{gstack.short(index)}_*.qcow2") if p.suffixes == [".qcow2"]
    ]
    assert overlays == [Path(value["disks"]["cow"])]


def test_capture_of_the_live_guest_then_reload_boots_the_captured_disk(
    gstack: Stack, gworker: CeleryWorker
) -> None:
    index = 1
    gstack.reset_computer(index)
    computer_id = gstack.site.computer_ids[index]
    short = gstack.short(index)
    old_master_sum = sha256(gstack.master)
    _res, address = load_for_user(gstack, gworker, index)
    # Not synced on purpose: only a clean shutdown (ACPI honoured, filesystems unmounted) keeps it.
    trace = user_writes(gstack, address, sync=False)
    before = guest_facts(gstack, address)

    cap_req, _cap_res, new_rev = gstack.capture_request(index)
    _rid, task_id = dispatch_one(gstack, "vcl.capture")
    value = wait_success(gstack, task_id, gworker)
    timeout = gstack.settings.shutdown_timeout
    assert timeout >= 30, "the guest stack must give the guest time to power off"
    # The task records the guest's ACPI shutdown time (core_shutdown); a guest that ignored ACPI
    # would keep it waiting for the full timeout.
    shutdown_s = float(value["timings"]["core_shutdown"])
    assert shutdown_s < timeout / 3, (shutdown_s, timeout, value["timings"])
    print(f"capture: shutdown {shutdown_s:.1f} s (timeout {timeout} s), timings {value['timings']}")
    assert gstack.store.request_states(cap_req) == ("complete", "image")
    new_master = Path(value["disks"]["master"])
    assert new_master != gstack.master and "backing-filename" not in qemu_img_info(new_master)
    assert sha256(gstack.master) == old_master_sum
    assert gstack.domains(short) == []
    assert gstack.store.computer_state(computer_id) == "reload"
    reload_req = gstack.one(
        "SELECT r.id FROM request r JOIN state s ON s.id=r.stateid JOIN reservation v ON v.requestid=r.id"
        " WHERE v.imagerevisionid=:rev AND s.name='reload'",
        rev=new_rev,
    )[0]

    rid, task_id = dispatch_one(gstack, "vcl.reload")
    assert rid == reload_req
    value = wait_success(gstack, task_id, gworker)
    assert_answered(gstack, index, value)
    assert Path(str(qemu_img_info(value["disks"]["cow"])["full-backing-filename"])) == new_master
    assert gstack.store.computer_state(computer_id) == "available"
    address = str(value["address"])
    after = guest_facts(gstack, address)
    # A new revision on this computer: a cold boot of the captured disk.
    assert after["boot_id"] != before["boot_id"]
    # The captured image is the user's disk: the file is in it (the memory one is not), and
    # post-load recorded the new revision.
    assert file_in_guest(gstack, address, trace.disk_path) == trace.content
    assert file_in_guest(gstack, address, trace.memory_path) is None
    assert postload.parse_currentimage(after["currentimage"])["imagerevision_id"] == str(new_rev)
    conn = gstack.conn()
    try:
        dom = conn.lookupByName(str(value["domain"]))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
