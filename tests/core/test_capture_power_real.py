"""capture(), power and snapshots on the real qemu:///system."""

from __future__ import annotations

import os
import subprocess

import pytest

from worker.devkit import libvirt_env
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
    env.provisioner(res).guest().power_off()
    libvirt_env.write_pattern(loaded.cow_path, 0xAB, offset=1 << 20, length="1M")
    keep = env.datastore / "cow-copy.qcow2"
    subprocess.run(["cp", loaded.cow_path, str(keep)], check=True)
    env.provisioner(res).guest().start()

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
    result = prov.capture(progress=cb)

    assert result.new_image_name == "linux-CentOS7Base64bitVM-3081-v6"
    assert result.master_path == str(env.images / f"{result.new_image_name}.qcow2")
    info = libvirt_env.qemu_img_info(result.master_path)
    assert "backing-filename" not in info and info["format"] == "qcow2"
    assert qemuimg.compare(result.master_path, str(keep))
    assert (os.stat(result.master_path).st_mode & 0o777) == 0o444
    assert (env.images / f"{result.new_image_name}.xml").read_text().startswith("<domain")
    # The user's VM survives the capture itself: it is deleted only once the new image is recorded
    # (the flow calls remove_captured_domain after the DB commit), so a failed commit loses nothing.
    assert os.path.exists(loaded.cow_path)
    assert libvirt_env.list_domain_names(res.computer_short_name) == [result.domain_name]
    assert prov.remove_captured_domain(result.domain_name)
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
    g = prov.guest()
    assert g.name == name and g.power_status() == "on"
    g.power_off()  # hard stop, VCL's power_off
    assert g.power_status() == "off"
    g.power_off()  # already off: still success
    g.start()
    assert g.power_status() == "on"
    g.start()  # already on: success
    dom_id = prov.host.connection().lookupByName(name).ID()
    g.power_off()  # VCL's power_reset: off, then on
    g.start()
    assert g.power_status() == "on"
    assert prov.host.connection().lookupByName(name).ID() != dom_id
    # graceful shutdown: SeaBIOS ignores ACPI, so it is destroyed after shutdown_timeout
    settings = prov.settings
    assert g.shutdown(settings.shutdown_timeout, settings.shutdown_retry_interval) is False
    assert g.power_status() == "off"
    info = g.info()
    assert info.state == "shut off" and info.id is None

    conn = prov.host.connection()
    snap = libvirt_env.create_snapshot(conn, name, "snap1")
    assert snap == "snap1"
    libvirt_env.create_snapshot(conn, name, "snap2")
    assert set(libvirt_env.snapshot_names(conn, name)) == {"snap1", "snap2"}
    g.delete_snapshot("snap1")  # deletes children too
    assert libvirt_env.snapshot_names(conn, name) == []
    libvirt_env.create_snapshot(conn, name, "snap3")
    # delete_domain removes snapshots, the overlay and the definition
    assert prov.post_maintenance_action() == [name]
    assert prov.host.lookup_guest(name) is None
