"""A datastore shared by two hosts (the same directory as both hosts' datastorepath, as with NFS):
two hosts materialising a master that is only in the repository, at the same instant, make exactly
one copy. Each host's ``VCL_LOCK_DIR`` is its own (host A: a temporary directory; host B: a directory
only its mount namespace has), as on a real site: only a lock in the shared datastore holds site-wide.
The copies run in real processes on each host (``KVMDriver.ensure_master``, the load's own step)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from worker.devkit.images import make_master, qemu_img_info
from worker.devkit.second_host import SecondHost
from worker.hypervisors.drivers.base import DiskOptions, MasterImage
from worker.hypervisors.drivers.image_locks import DATASTORE_LOCK_DIR, datastore_lock, image_lock

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(300)]

ROUNDS = 3
# Waits for a shared start instant, then materialises the master as a load does; prints the outcome.
ENSURE = """
import json, sys, time
from worker.hypervisors.drivers.base import DiskOptions, MasterImage
from worker.hypervisors.drivers.kvm import KVMDriver
name, datastore, repository, lock_dir, start = sys.argv[1:6]
master = MasterImage(image_name=name, datastore_path=datastore, datastore_imagetype="qcow2",
                     repository_path=repository)
while time.time() < float(start):
    time.sleep(0.001)
path, copied = KVMDriver().ensure_master(master, DiskOptions(lock_dir, 60, 600))
print(json.dumps({"path": path, "copied": copied}))
"""


def _ensure_on_both(
    host_b: SecondHost, args: list[str], a_locks: Path, b_locks: str
) -> list[dict[str, object]]:
    start = str(time.time() + 3)  # both interpreters are up and waiting by then
    a = subprocess.Popen(
        [sys.executable, "-c", ENSURE, *args, str(a_locks), start], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    b = subprocess.Popen(
        host_b.command([sys.executable, "-c", ENSURE, *args, b_locks, start]), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out = []
    for proc in (a, b):
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_two_hosts_copy_a_repository_master_once(
    host_b_machine: SecondHost, repository: Path, shared_datastore: Path, tmp_path: Path
) -> None:
    b_locks = f"/var/lib/libvirt/vcl-locks-{uuid.uuid4().hex[:8]}"  # host B's own, invisible to A
    for round_ in range(ROUNDS):
        name = f"linux-sharedds{uuid.uuid4().hex[:6]}-v{round_}"
        source = repository / name / f"{name}.qcow2"
        source.parent.mkdir()
        make_master(source, pattern=0x5A, data_mb=64, mode=0o444)
        try:
            results = _ensure_on_both(
                host_b_machine, [name, str(shared_datastore), str(repository)], tmp_path / "locks-a", b_locks
            )
            master = shared_datastore / f"{name}.qcow2"
            assert {str(r["path"]) for r in results} == {str(master)}
            assert sorted(bool(r["copied"]) for r in results) == [False, True], results
            assert "backing-filename" not in qemu_img_info(master)
            assert not list(shared_datastore.glob("*.part")), list(shared_datastore.iterdir())
            check = subprocess.run(["qemu-img", "compare", str(source), str(master)], capture_output=True)
            assert check.returncode == 0, check.stdout
        finally:
            for p in (*shared_datastore.glob(f"{name}*"), source):
                p.unlink(missing_ok=True)
            source.parent.rmdir()
    # Host B's lock directory is its own: host A never saw it.
    assert not Path(b_locks).exists()
    assert host_b_machine.run(["test", "-d", b_locks]).returncode == 0


def test_one_lock_when_the_hosts_lock_dir_is_the_datastores(tmp_path: Path) -> None:
    """``VCL_LOCK_DIR`` = ``<datastore>/.locks`` (the devkit's stacks): the datastore lock is that same
    lock, not a second flock of one file that would wait for itself."""
    master = MasterImage(
        image_name="linux-one-v0",
        datastore_path=str(tmp_path),
        datastore_imagetype="qcow2",
        repository_path=None,
    )
    options = DiskOptions(str(tmp_path / DATASTORE_LOCK_DIR), 60, 1)
    with image_lock(options.lock_dir, master.image_name, timeout=1), datastore_lock(master, options):
        pass
    other = DiskOptions(str(tmp_path / "host-locks"), 60, 1)
    with image_lock(other.lock_dir, master.image_name, timeout=1), datastore_lock(master, other):
        assert (tmp_path / DATASTORE_LOCK_DIR / "master-linux-one-v0.lock").exists()
