"""Cross-host image flow: a capture on host A puts the new revision's master into the repository the
two hosts share; the first reservation of that revision on host B copies it from the repository into
host B's datastore once and boots it (the user's file from host A's guest is in it); the next one on
host B uses host B's copy. Host B never sees host A's datastore (it is not even a path there)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from worker.devkit.images import qemu_img_info
from worker.devkit.stack import Stack
from worker.devkit.two_hosts import HostB
from worker.hypervisors.postload import GuestLogin, GuestShell

from .helpers import dispatch_all, ssh_on, wait_success

pytestmark = [pytest.mark.hosts, pytest.mark.guest, pytest.mark.timeout(1200)]


def test_capture_on_a_loads_on_b(two_host_stack: Stack, host_b: HostB, tmp_path: Path) -> None:
    stack = two_host_stack
    assert stack.repository is None and stack.guest_image is not None
    repository = Path(
        str(stack.one("SELECT repositorypath FROM vmprofile WHERE id=:i", i=host_b.vmprofile_id)[0])
    )
    key = str(stack.guest_image.private_key)
    worker_a = stack.start_worker(tmp_path)
    worker_b = host_b.start_worker(tmp_path)

    # A user's reservation on host A, and a file on its disk.
    stack.new_request(0)
    ((task_name, task_id),) = dispatch_all(stack).values()
    assert task_name == "vcl.load"
    address_a = str(wait_success(stack, task_id, worker_a)["address"])
    content = uuid.uuid4().hex
    with GuestShell(GuestLogin(address=address_a, key_files=(key,))) as sh:
        sh.check(["tee", "/root/from-host-a"], stdin=content + "\n")
        sh.check(["sync"])

    # The capture on host A: the new revision's master in A's datastore and in the repository.
    _req, _res, new_rev = stack.capture_request(0)
    ((task_name, task_id),) = dispatch_all(stack).values()
    assert task_name == "vcl.capture"
    captured = wait_success(stack, task_id, worker_a)
    new_name = Path(captured["disks"]["master"]).stem
    assert Path(captured["disks"]["master"]).parent == stack.datastore
    repo_master = Path(captured["disks"]["repository"])
    assert repo_master.is_relative_to(repository) and repo_master.is_file(), captured["disks"]

    # Host B cannot read host A's datastore: the path does not exist there.
    assert host_b.host.run(["test", "-e", str(stack.datastore)]).returncode != 0
    assert host_b.host.run(["test", "-f", str(repo_master)]).returncode == 0
    b_master = host_b.host.on_host(host_b.datastore / f"{new_name}.qcow2")
    assert not b_master.exists()

    # First reservation of the revision on host B: copied from the repository once, booted.
    host_b.new_reservation(1, imagerevision_id=new_rev)
    enqueued = dispatch_all(stack)  # also host A's reload the capture inserted
    task_name, task_id = enqueued[host_b.queue]
    assert task_name == "vcl.load"
    first = wait_success(stack, task_id, worker_b)
    assert first["status"] == "done" and first["master_copied"] is True, first
    backing = Path(str(qemu_img_info(host_b.host.on_host(first["disks"]["cow"]))["full-backing-filename"]))
    assert backing == host_b.datastore / f"{new_name}.qcow2"
    assert ssh_on(host_b.host, key, host_b.private_ip(1), "cat /root/from-host-a").strip() == content
    copied = os.stat(b_master)

    # The next reservation on host B uses host B's copy.
    host_b.new_reservation(2, imagerevision_id=new_rev)
    task_name, task_id = dispatch_all(stack)[host_b.queue]
    second = wait_success(stack, task_id, worker_b)
    assert second["status"] == "done" and second["master_copied"] is False, second
    again = os.stat(b_master)
    assert (again.st_ino, again.st_mtime_ns) == (copied.st_ino, copied.st_mtime_ns)
    assert ssh_on(host_b.host, key, host_b.private_ip(2), "cat /root/from-host-a").strip() == content
    # Host A's reload of the captured revision ran on host A (its queue), not on host B.
    if stack.queue in enqueued:
        assert wait_success(stack, enqueued[stack.queue][1], worker_a)["status"] == "done"
