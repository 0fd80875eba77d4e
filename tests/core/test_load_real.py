"""load() on the real qemu:///system."""

from __future__ import annotations

import libvirt
import pytest

from worker.devkit import libvirt_env

pytestmark = pytest.mark.real


def test_load_defines_running_domain_on_qcow2_overlay(env, events) -> None:  # type: ignore[no-untyped-def]
    seen, cb = events
    prov = env.provisioner()
    master = env.master_for(prov.reservation)
    before = libvirt_env.sha256(master)

    result = prov.load(progress=cb)

    dom = prov.host.connection().lookupByName(result.domain_name)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert result.domain_type in ("kvm", "qemu")
    assert result.master_path == str(master) and not result.master_copied
    info = libvirt_env.qemu_img_info(result.cow_path)
    assert info["format"] == "qcow2"
    assert info["full-backing-filename"] == str(master)
    assert info["backing-filename-format"] == "qcow2"
    assert libvirt_env.sha256(master) == before
    assert [e.stage for e in seen] == ["startload", "transfervm", "vmsetupconfig", "startvm"]
    assert prov.guest().power_status() == "on"
    assert prov.node_status().value == "READY"
    libvirt_env.validate_domain_xml(prov.guest().xml(), env.datastore)
    assert set(prov.guest().mac_addresses()) == {prov.reservation.eth0_mac, prov.reservation.eth1_mac}
    assert dom.autostart() == 1


def test_load_twice_converges(env) -> None:  # type: ignore[no-untyped-def]
    prov = env.provisioner()
    master = env.master_for(prov.reservation)
    before = libvirt_env.sha256(master)
    first = prov.load()
    second = env.provisioner(prov.reservation).load()
    short = prov.reservation.computer_short_name
    assert libvirt_env.list_domain_names(short) == [first.domain_name] == [second.domain_name]
    vms = sorted(p.name for p in (env.datastore / "vms").iterdir())
    assert vms == [f"{short}_3081-v5.qcow2"]
    assert libvirt_env.sha256(master) == before
    # post-maintenance removes this computer's domains and overlays, nothing else
    removed = env.provisioner(prov.reservation).post_maintenance_action()
    assert removed == [first.domain_name]
    assert libvirt_env.list_domain_names(short) == []
    assert list((env.datastore / "vms").iterdir()) == []
    assert master.exists() and libvirt_env.sha256(master) == before


def test_load_other_revision_replaces_previous(env) -> None:  # type: ignore[no-untyped-def]
    res1 = env.reservation()
    env.master_for(res1)
    env.provisioner(res1).load()
    res2 = env.reservation(
        computer_short_name=res1.computer_short_name,
        imagerevision_revision=6,
        imagerevision_imagename="linux-CentOS7Base-3081-v6",
    )
    env.master_for(res2)
    p2 = env.provisioner(res2)
    out = p2.load()
    assert libvirt_env.list_domain_names(res1.computer_short_name) == [out.domain_name]
    assert out.domain_name.endswith("3081-v6")
    assert sorted(p.name for p in (env.datastore / "vms").iterdir()) == [
        f"{res1.computer_short_name}_3081-v6.qcow2"
    ]
    # node_status for the old revision: RELOAD
    assert env.provisioner(res1).node_status().value == "RELOAD"
    p2.guest().power_off()
    assert p2.node_status().value == "RELOAD"  # off: nothing answers SSH (VCL's Provisioning.pm)


def test_generated_macs_unique_and_valid(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation(vmprofile={"eth0_generated": True, "eth1_generated": True})
    env.master_for(res)
    prov = env.provisioner(res)
    prov.load()
    macs = prov.guest().mac_addresses()
    assert len(set(macs)) == 2
    assert all(m.startswith("52:54:00:") for m in macs)
    assert res.eth0_mac not in macs
