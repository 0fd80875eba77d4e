"""Boot snapshots on the real guest (TCG here): the first load saves one, a reload of the same
revision restores it onto a fresh copy of the saved disk, a changed master or memory size makes the
next load boot cold (and save anew), a broken snapshot falls back to a cold boot, the setting turns it
off, and the reaper keeps a live computer's snapshot and removes a dead one's."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import Env
from worker.config import Settings
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork
from worker.hypervisors import postload
from worker.hypervisors.boot_snapshot_files import disk_cost, snapshot_files
from worker.hypervisors.host import get_host
from worker.hypervisors.load import LoadResult
from worker.hypervisors.provisioner import LibvirtProvisioner
from worker.reservation import Reservation

pytestmark = [pytest.mark.real, pytest.mark.guest]


def _load(env: Env, res: Reservation, **settings: Any) -> LoadResult:
    prov = env.guest_provisioner(res, **settings)
    prov.initialize()
    return prov.load()


def _guest(res: Reservation, *argv: str) -> str:
    login = postload.login_for(res, res.computer_private_ip or "", host_keys=None)
    assert login is not None
    with postload.GuestShell(login) as shell:
        return shell.check(list(argv))


def test_reload_restores_a_fresh_copy_and_a_broken_snapshot_boots_cold(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 31)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    t0 = time.monotonic()
    cold = _load(env, res)
    cold_s = time.monotonic() - t0
    assert cold.boot_snapshot == "saved", cold.timings
    files = snapshot_files(
        LibvirtProvisioner(res, settings=env.settings, host=get_host("qemu:///system")).layout
    )
    assert files.complete()
    manifest = json.loads(Path(files.manifest).read_text())
    assert manifest["made_from"]["definition"]["memory_mib"] >= 256
    cost = disk_cost(os.path.dirname(files.memory))
    assert cost["snapshots"] == 1 and cost["memory_bytes"] > 10 * 2**20
    mib = cost["memory_bytes"] / 2**20
    t = cold.timings
    print(f"cold load {cold_s:.1f} s, save {t.get('snapshot_save')} s, resume {t.get('snapshot_resume')} s, "
          f"memory state {mib:.0f} MiB")  # fmt: skip
    # The user writes a file after the snapshot; the reload must not bring it back.
    _guest(res, "sh", "-c", "echo secret > /root/user-file && sync")

    t0, wall0 = time.monotonic(), time.time()
    warm = _load(env, res)
    warm_s = time.monotonic() - t0
    assert warm.boot_snapshot == "restored", warm.timings
    assert "snapshot_restore" in warm.timings and "power_on" not in warm.timings
    assert warm.answer is not None and warm.answer.banner.startswith("SSH-2.0-")
    print(f"restored load {warm_s:.1f} s ({warm.timings})")
    assert warm_s < cold_s / 3
    status, _ = _guest_run(res, "test", "-e", "/root/user-file")
    assert status != 0, "the previous user's file survived the reload"
    # A new overlay file that is neither the previous user's nor the snapshot's own disk.
    cow = os.stat(warm.cow_path)
    assert cow.st_ino != os.stat(files.disk).st_ino and cow.st_ctime >= wall0 - 1
    # The clock was set to the host's after the restore.
    assert abs(int(_guest(res, "date", "+%s").strip()) - time.time()) < 5
    assert files.complete()

    # A memory state libvirt cannot read (same size, so only the restore itself can tell).
    size = os.path.getsize(files.memory)
    with open(files.memory, "r+b") as fh:
        fh.write(b"\0" * min(size, 4096))
    fallback = _load(env, res)
    assert "snapshot_restore" not in fallback.timings and "power_on" in fallback.timings
    assert fallback.answer is not None
    assert fallback.boot_snapshot == "saved"  # the cold boot saved a good one again
    assert files.complete()


def _guest_run(res: Reservation, *argv: str) -> tuple[int, str]:
    login = postload.login_for(res, res.computer_private_ip or "", host_keys=None)
    assert login is not None
    with postload.GuestShell(login) as shell:
        return shell.run(list(argv))


def test_master_or_memory_change_invalidates(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 32)
    master = install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    assert _load(env, res).boot_snapshot == "saved"
    files = snapshot_files(
        LibvirtProvisioner(res, settings=env.settings, host=get_host("qemu:///system")).layout
    )
    first = json.loads(Path(files.manifest).read_text())
    # The master changed (as a recapture in place would): the next load boots cold and saves anew.
    st = os.stat(master)
    os.utime(master, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = _load(env, res)
    assert "power_on" in again.timings and again.boot_snapshot == "saved"
    second = json.loads(Path(files.manifest).read_text())
    assert second["made_from"]["master"]["mtime_ns"] != first["made_from"]["master"]["mtime_ns"]
    # More memory for the image: the saved state is of another machine.
    bigger = dataclasses.replace(res, image_minram=640)
    grown = _load(env, bigger)
    assert "power_on" in grown.timings and grown.boot_snapshot == "saved"
    third = json.loads(Path(files.manifest).read_text())
    assert third["made_from"]["definition"]["memory_mib"] == 640


def test_setting_off_never_saves_or_restores(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 33)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    off = _load(env, res, boot_snapshots=False)
    assert off.boot_snapshot == "" and "snapshot_save" not in off.timings
    files = snapshot_files(
        LibvirtProvisioner(res, settings=env.settings, host=get_host("qemu:///system")).layout
    )
    assert not any(os.path.exists(p) for p in files.finals)
    assert Settings.from_env({"VCL_BOOT_SNAPSHOTS": "0"}).boot_snapshots is False
    assert Settings.from_env({}).boot_snapshots is True


def _inventory(vmpath: Path, live: set[tuple[str, int, int]], protected: frozenset[str] = frozenset()) -> Any:
    from worker.db.inventory import HostInventory, InventoryComputer

    computers = {
        s: (InventoryComputer(i, s, 7, False, "available"),) for i, s in enumerate(("pc1", "pc2"), 1)
    }
    return HostInventory(
        vmhost_id=7, vmpath=str(vmpath), datastorepath=str(vmpath), imagetype="qcow2", computers=computers,
        live=frozenset(live), protected=protected, master_stems=frozenset(),
    )  # fmt: skip


class _Store:
    def __init__(self, inventory: Any) -> None:
        self.inventory = inventory

    def host_inventory(self, _name: str) -> Any:
        return self.inventory


class _NoGuests:
    def list_guests(self) -> list[Any]:
        return []


def test_reaper_keeps_live_snapshots_and_removes_dead_ones(tmp_path: Path) -> None:
    from worker.reaper import apply_plan, plan_reap

    vmpath = tmp_path.resolve()
    names = {
        "pc1": ["pc1_5-v2.bootsnap.json", "pc1_5-v2.bootsnap.mem", "pc1_5-v2.bootsnap.qcow2"],  # live
        "dead": ["pc1_5-v1.bootsnap.json", "pc1_5-v1.bootsnap.mem", "pc1_5-v1.bootsnap.qcow2.part"],
        "pc2": ["pc2_5-v2.bootsnap.mem"],  # computer with a pending capture: protected
        "other": ["stranger_5-v2.bootsnap.mem", "pc1_5-v2.bootsnap.txt"],  # never ours
    }
    for group in names.values():
        for n in group:
            (vmpath / n).write_bytes(b"x")
    store = _Store(_inventory(vmpath, {("pc1", 5, 2)}, frozenset({"pc2"})))
    host: Any = _NoGuests()

    def replan() -> Any:
        return plan_reap(store, host, "vmhost", (str(vmpath),))  # type: ignore[arg-type]

    plan = replan()
    assert sorted(os.path.basename(o.name) for o in plan.snapshots) == sorted(names["dead"])
    assert os.path.basename(plan.snapshots[0].name).endswith(".json")  # the manifest goes first
    removed = apply_plan(plan, host, replan, lambda _ids: contextlib.nullcontext())
    assert sorted(os.path.basename(p) for p in removed) == sorted(names["dead"])
    left = {p.name for p in vmpath.iterdir()}
    assert left == set(names["pc1"] + names["pc2"] + names["other"])
    # The computer moves to another revision: its old snapshot becomes an orphan.
    store.inventory = _inventory(vmpath, {("pc1", 5, 3)}, frozenset({"pc2"}))
    assert {os.path.basename(o.name) for o in replan().snapshots} == set(names["pc1"])


def test_maintenance_removes_only_that_computers_snapshots(tmp_path: Path) -> None:
    from worker.hypervisors.boot_snapshot_files import remove_computer_snapshots

    vmpath = tmp_path.resolve()
    mine = ["pc1_5-v2.bootsnap.json", "pc1_5-v2.bootsnap.mem", "pc1_5-v2.bootsnap.qcow2",
            "pc1_7-v1.bootsnap.mem.part"]  # fmt: skip
    others = ["pc10_5-v2.bootsnap.mem", "pc2_5-v2.bootsnap.json", "pc1_5-v2.qcow2", "pc1_5-v2.bootsnap.txt"]
    for n in mine + others:
        (vmpath / n).write_bytes(b"x")
    removed = remove_computer_snapshots(str(vmpath), "pc1", "qcow2")
    assert sorted(os.path.basename(p) for p in removed) == sorted(mine)
    assert os.path.basename(removed[0]).endswith(".json")  # the manifest first: never half a set
    assert {p.name for p in vmpath.iterdir()} == set(others)
