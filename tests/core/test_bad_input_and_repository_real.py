"""Typed errors for bad input; master materialisation from the repository (real host)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading

import pytest

from tests.core.conftest import files_in
from worker.devkit import libvirt_env
from worker.hypervisors.errors import ImageCorruptError, ImageNotFoundError, InvalidInputError
from worker.hypervisors.host import get_host
from worker.hypervisors.provisioner import LibvirtProvisioner

pytestmark = pytest.mark.real


@pytest.mark.parametrize("bad", ["../escape-v1", 'quo"te-v1', "less<than-v1", "with space-v1", "a/b-v1"])
def test_bad_image_names_rejected(env, bad: str) -> None:  # type: ignore[no-untyped-def]
    before = files_in(env.datastore)
    with pytest.raises(InvalidInputError) as ei:
        env.provisioner(imagerevision_imagename=bad).load()
    assert repr(bad) in str(ei.value)
    assert files_in(env.datastore) == before


def test_missing_master_and_no_repository(env) -> None:  # type: ignore[no-untyped-def]
    prov = env.provisioner()
    with pytest.raises(ImageNotFoundError, match="linux-CentOS7Base-3081-v5") as ei:
        prov.load()
    assert "no image repository is configured" in str(ei.value)
    assert files_in(env.datastore) == set()
    assert not prov.layout.image_exists()
    assert libvirt_env.list_domain_names(prov.reservation.computer_short_name) == []


def test_corrupt_master_refused(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation()
    master = env.images / f"{res.imagerevision_imagename}.qcow2"
    master.write_bytes(os.urandom(1 << 20))
    before_sum = libvirt_env.sha256(master)
    with pytest.raises(ImageCorruptError, match=str(master)):
        env.provisioner(res).load()
    assert libvirt_env.sha256(master) == before_sum
    assert files_in(env.datastore) == {f"images/{master.name}"}
    assert libvirt_env.list_domain_names(res.computer_short_name) == []


def test_master_with_backing_file_refused(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation()
    base = libvirt_env.make_master(env.datastore / "other-base.qcow2")
    master = env.images / f"{res.imagerevision_imagename}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(master)], check=True
    )
    before_sum = libvirt_env.sha256(master)
    with pytest.raises(ImageCorruptError, match="own backing file"):
        env.provisioner(res).load()
    assert libvirt_env.sha256(master) == before_sum
    assert files_in(env.datastore) == {f"images/{master.name}", base.name}


def test_unknown_vmprofile_switch(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation(vmprofile={"virtualswitch1": "nosuchswitch0"})
    env.master_for(res)
    before = files_in(env.datastore)
    with pytest.raises(InvalidInputError, match="unknown vmprofile switch 'nosuchswitch0'"):
        env.provisioner(res).load()
    assert files_in(env.datastore) == before


def _repo_reservation(env):  # type: ignore[no-untyped-def]
    repo = env.datastore / "repo"
    res = env.reservation(vmprofile={"repository_path": str(repo)})
    src = libvirt_env.make_master(
        repo / res.imagerevision_imagename / f"{res.imagerevision_imagename}.qcow2", pattern=0x5A
    )
    return res, src


def test_master_copied_from_repository_once(env, events) -> None:  # type: ignore[no-untyped-def]
    seen, cb = events
    res, src = _repo_reservation(env)
    prov = env.provisioner(res)
    assert prov.layout.image_exists()
    out = prov.load(progress=cb)
    master = env.images / f"{res.imagerevision_imagename}.qcow2"
    assert out.master_copied and out.master_path == str(master)
    assert stat.S_IMODE(os.stat(master).st_mode) == 0o444
    assert not list(env.datastore.rglob("*.part"))
    copies = [e for e in seen if e.stage == "copy"]
    assert copies and copies[-1].percent == 100.0
    assert [e.stage for e in seen if e.stage != "copy"] == [
        "startload",
        "transfervm",
        "vmsetupconfig",
        "startvm",
    ]
    from worker.hypervisors import qemuimg

    assert qemuimg.compare(str(master), str(src))
    mtime = os.stat(master).st_mtime_ns
    again = env.provisioner(res).load()
    assert not again.master_copied and os.stat(master).st_mtime_ns == mtime
    assert prov.layout.image_size_bytes() > 0 and prov.get_image_size() >= 0


def test_concurrent_loads_copy_master_once(env) -> None:  # type: ignore[no-untyped-def]
    res_a, _src = _repo_reservation(env)
    res_b = env.reservation(
        vmprofile={"repository_path": str(env.datastore / "repo")},
    )
    results: dict[str, object] = {}

    def run(key: str, res) -> None:  # type: ignore[no-untyped-def]
        try:
            results[key] = LibvirtProvisioner(
                res, settings=env.settings, host=get_host("qemu:///system")
            ).load()
        except Exception as exc:  # pragma: no cover - reported below
            results[key] = exc

    threads = [threading.Thread(target=run, args=(k, r)) for k, r in (("a", res_a), ("b", res_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    copied = [getattr(r, "master_copied", None) for r in results.values()]
    assert sorted(copied, key=str) == [False, True], results
    assert not list(env.datastore.rglob("*.part"))


def test_concurrent_processes_copy_master_once(env) -> None:  # type: ignore[no-untyped-def]
    _repo_reservation(env)
    code = (
        "import sys, json\n"
        "from worker.hypervisors.drivers.kvm import KVMDriver\n"
        "from worker.hypervisors.load import disk_options\n"
        "from worker.hypervisors.provisioner import LibvirtProvisioner\n"
        "from worker.hypervisors.host import get_host\n"
        "from worker.devkit.reservations import make_reservation\n"
        "from worker.config import Settings\n"
        f"res = make_reservation(vmprofile={{'datastore_path': {str(env.images)!r}, "
        f"'vm_path': {str(env.datastore / 'vms')!r}, 'repository_path': {str(env.datastore / 'repo')!r}}})\n"
        f"p = LibvirtProvisioner(res, settings=Settings(lock_dir={env.settings.lock_dir!r}), "
        "host=get_host('test:///default'))\n"
        "m, copied = KVMDriver().ensure_master(p.layout.master_image(), disk_options(p.settings))\n"
        "print(json.dumps(copied))\n"
    )
    procs = [
        subprocess.Popen([".venv/bin/python", "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert sorted(outs) == ["false", "false", "true"], outs
    assert not list(env.datastore.rglob("*.part"))
