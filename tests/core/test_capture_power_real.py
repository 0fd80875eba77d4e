"""capture(), power and snapshots on the real qemu:///system."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import libvirt_env
from worker.hypervisors import qemuimg
from worker.hypervisors.errors import ImageExistsError

pytestmark = pytest.mark.real


def test_capture_flattens_cow_into_standalone_master(env, events) -> None:  # type: ignore[no-untyped-def]
    seen, cb = events
    res = env.reservation()
    master = env.master_for(res, pattern=0xCD)
    master_sum = libvirt_env.sha256(master)
    loaded = env.provisioner(res).load()
    # write guest data into the COW while the domain is stopped
    env.provisioner(res).power_off()
    libvirt_env.write_pattern(loaded.cow_path, 0xAB, offset=1 << 20, length="1M")
    keep = env.datastore / "cow-copy.qcow2"
    subprocess.run(["cp", loaded.cow_path, str(keep)], check=True)
    env.provisioner(res).power_on()

    cap_res = env.reservation(
        computer_short_name=res.computer_short_name,
        computer_id=res.computer_id,
        eth0_mac=res.eth0_mac,
        eth1_mac=res.eth1_mac,
        request_state="image",
        imagerevision_revision=6,
        imagerevision_imagename="linux-CentOS7Base-3081-v6",
    )
    prov = env.provisioner(cap_res)
    assert prov.get_domain_name() == loaded.domain_name  # found by MAC
    result = prov.capture(cb)

    assert result.new_image_name == "linux-CentOS7Base64bitVM-3081-v6"
    assert result.master_path == str(env.images / f"{result.new_image_name}.qcow2")
    info = libvirt_env.qemu_img_info(result.master_path)
    assert "backing-filename" not in info and info["format"] == "qcow2"
    assert qemuimg.compare(result.master_path, str(keep))
    assert (os.stat(result.master_path).st_mode & 0o777) == 0o444
    assert (env.images / f"{result.new_image_name}.xml").read_text().startswith("<domain")
    assert not os.path.exists(loaded.cow_path)
    assert libvirt_env.list_domain_names(res.computer_short_name) == []
    assert libvirt_env.sha256(master) == master_sum
    assert not list(env.datastore.rglob("*.part"))
    assert any(e.stage == "capture" and e.percent == 100.0 for e in seen)
    assert result.master_size_bytes > 0 and result.repository_path is None

    # a second capture to the same name is refused
    reloaded = env.provisioner(res)
    reloaded.load()
    with pytest.raises(ImageExistsError, match=result.new_image_name):
        env.provisioner(cap_res).capture()


def test_capture_with_repository_copy(env) -> None:  # type: ignore[no-untyped-def]
    repo = env.datastore / "repo"
    res = env.reservation(vmprofile={"repository_path": str(repo)})
    env.master_for(res)
    env.provisioner(res).load()
    cap = env.reservation(
        computer_short_name=res.computer_short_name,
        computer_id=res.computer_id,
        eth0_mac=res.eth0_mac,
        eth1_mac=res.eth1_mac,
        request_state="image",
        imagerevision_revision=7,
        vmprofile={"repository_path": str(repo)},
    )
    result = env.provisioner(cap).capture()
    assert result.repository_path == str(repo / result.new_image_name / f"{result.new_image_name}.qcow2")
    info = libvirt_env.qemu_img_info(result.repository_path)
    assert info["format-specific"]["data"]["compat"] == "0.10"  # type: ignore[index]
    assert (repo / result.new_image_name / f"{result.new_image_name}.xml").exists()
    assert qemuimg.compare(result.master_path, result.repository_path)


def test_power_and_snapshots(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation()
    env.master_for(res)
    prov = env.provisioner(res)
    name = prov.load().domain_name
    assert prov.power_status() == "on"
    assert prov.power_off() and prov.power_status() == "off"
    assert prov.power_off()  # already off: still success
    assert prov.power_on() and prov.power_status() == "on"
    assert prov.power_on()  # already on: success
    dom_id = prov.host.connection().lookupByName(name).ID()
    assert prov.power_reset() and prov.power_status() == "on"
    assert prov.host.connection().lookupByName(name).ID() != dom_id
    # graceful shutdown: SeaBIOS ignores ACPI, so it is destroyed after shutdown_timeout
    assert prov.shutdown() is False and prov.power_status() == "off"
    info = prov.get_domain_info()[name]
    assert info["state"] == "shut off" and info["id"] is None

    snap = prov.create_snapshot(name, "snap1")
    assert snap == "snap1"
    prov.create_snapshot(name, "snap2")
    assert set(prov.get_snapshot_info()) == {"snap1", "snap2"}
    prov.delete_snapshot(name, "snap1")  # deletes children too
    assert prov.get_snapshot_info() == {}
    prov.create_snapshot(name, "snap3")
    # delete_domain removes snapshots, the overlay and the definition
    assert prov.post_maintenance_action() == [name]
    assert not prov.domain_exists(name)
