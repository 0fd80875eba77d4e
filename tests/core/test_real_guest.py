"""The core loads a real guest: it boots from a COW over the built master, gets the computer's
``privateIPaddress`` from the pinned DHCP entry, answers SSH, and post-load runs in it.

The negative controls fail for the reasons the issue names: a blank master never answers, and on a
host whose KVM is paravirtual (kvm_pvm) a forced ``type='kvm'`` domain never answers either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import Env
from worker.devkit import guest_network, images
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork
from worker.hypervisors import postload
from worker.hypervisors.domain_type import choose_domain_type
from worker.hypervisors.errors import LibvirtPermanentError
from worker.hypervisors.lifecycle import NodeStatus
from worker.hypervisors.network import LibvirtNetwork
from worker.hypervisors.readiness import GuestNotReadyError

pytestmark = [pytest.mark.real, pytest.mark.guest]


def test_real_guest_boots_gets_private_ip_answers_ssh_and_post_load_runs(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage, events: tuple[list[Any], Any]
) -> None:
    seen, on_event = events
    res = env.guest_reservation(dhcp_net, guest_image, 21)
    master = install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    master_sum = images.sha256(master)
    prov = env.guest_provisioner(res)
    prov.initialize()

    result = prov.load(progress=on_event)

    assert result.domain_type == choose_domain_type(libvirt_offers=prov.host.offers_domain_type).domain_type
    assert result.answer is not None
    assert result.answer.address == res.computer_private_ip
    assert result.answer.banner.startswith("SSH-2.0-")
    assert "machinebooted" in [e.stage for e in seen]
    # The MAC → privateIPaddress entry exists on the network, and the lease went to exactly that MAC.
    network = LibvirtNetwork.lookup(prov.host, dhcp_net.name)
    assert any(h.mac == res.eth0_mac and h.ip == res.computer_private_ip for h in network.dhcp_hosts())
    assert any(lease.ip == res.computer_private_ip for lease in guest_network.leases(network, res.eth0_mac))
    # Post-load ran inside the guest: hostname and currentimage.txt.
    login = postload.login_for(res, res.computer_private_ip or "", host_keys=None)
    assert login is not None
    with postload.GuestShell(login) as shell:
        assert shell.check(["hostname"]).strip() == res.computer_short_name
        recorded = postload.parse_currentimage(shell.check(["cat", postload.CURRENTIMAGE_PATH]))
    assert recorded["imagerevision_id"] == str(res.imagerevision_id)
    assert postload.POST_LOAD_MARK in recorded
    assert prov.node_status() is NodeStatus.READY
    # A domain that is off is RELOAD (VCL: not responding to SSH), although it is still defined.
    prov.guest().power_off()
    assert prov.node_status() is NodeStatus.RELOAD
    assert images.sha256(master) == master_sum


def test_blank_master_never_answers_and_the_attempt_is_removed(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 22)
    master = env.master_for(res)  # a blank disk: firmware finds nothing to boot
    master_sum = images.sha256(master)
    prov = env.guest_provisioner(res, ready_timeout=20)
    prov.initialize()
    with pytest.raises(GuestNotReadyError, match=rf"{res.computer_private_ip}:22 did not answer"):
        prov.load()
    assert prov.host.lookup_guest(prov.layout.domain_name) is None
    assert not Path(prov.layout.cow_path).exists()
    assert images.sha256(master) == master_sum


def test_forced_kvm_on_paravirtual_kvm_never_answers(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    choice = choose_domain_type()
    if not Path("/sys/module/kvm_pvm").exists():
        pytest.skip(f"no kvm_pvm here ({choice.reason}): a forced kvm domain is not the wrong type")
    assert choice.domain_type == "qemu", choice.reason
    res = env.guest_reservation(dhcp_net, guest_image, 23)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    prov = env.guest_provisioner(res, domain_type="kvm", ready_timeout=25)
    prov.initialize()
    # libvirt.pm's host-model CPU: QEMU refuses to start on kvm_pvm (it cannot set the host's MSRs);
    # a CPU QEMU accepts there boots a guest that never answers.
    with pytest.raises((GuestNotReadyError, LibvirtPermanentError)):
        prov.load()
    assert prov.host.lookup_guest(prov.layout.domain_name) is None
