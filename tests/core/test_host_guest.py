"""LibvirtHost hands out Guests; deletion rules and MAC lookup, on libvirt's test:///default."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.devkit import libvirt_env
from worker.hypervisors import domain_xml as dx
from worker.hypervisors.errors import AmbiguousDomainError, DomainNotFoundError
from worker.hypervisors.guest import Guest
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.lifecycle import remove_computer_domains, remove_domain


@pytest.fixture
def host() -> Iterator[LibvirtHost]:
    h = LibvirtHost("test:///default")
    yield h
    h.close()  # test:///default forgets its domains once no connection is open


def _define(host: LibvirtHost, name: str, disk: Path, mac: str) -> Guest:
    spec = dx.DomainSpec(
        name=name,
        uuid=str(uuid.uuid4()),
        domain_type="test",
        memory_mib=512,
        vcpus=1,
        disk_path=str(disk),
        nics=(dx.NicSpec("network", "default", mac),),
    )
    return host.define(dx.build_domain_xml(spec), autostart=False)


def test_guests_come_from_the_host(host: LibvirtHost, tmp_path: Path) -> None:
    g = _define(host, "hg1_img_1-v1", tmp_path / "hg1_1-v1.qcow2", "52:54:00:10:00:01")
    assert isinstance(g, Guest) and g.name == "hg1_img_1-v1"
    assert "hg1_img_1-v1" in [x.name for x in host.list_guests()]
    found = host.lookup_guest("hg1_img_1-v1")
    assert found is not None and found.disks()[0].format == "qcow2"
    assert host.lookup_guest("nope") is None
    with pytest.raises(DomainNotFoundError, match="nope"):
        host.require_guest("nope")
    assert "52:54:00:10:00:01" in host.used_macs()


def test_guest_by_mac(host: LibvirtHost, tmp_path: Path) -> None:
    _define(host, "hg2_a_1-v1", tmp_path / "a.qcow2", "52:54:00:20:00:01")
    assert host.guest_by_mac({"52:54:00:20:00:01", "52:54:00:99:99:99"}).name == "hg2_a_1-v1"
    with pytest.raises(DomainNotFoundError, match="52:54:00:99:99:98"):
        host.guest_by_mac({"52:54:00:99:99:98"})
    _define(host, "hg2_b_1-v1", tmp_path / "b.qcow2", "52:54:00:20:00:02")
    with pytest.raises(AmbiguousDomainError, match="2 domains"):
        host.guest_by_mac({"52:54:00:20:00:01", "52:54:00:20:00:02"})


def test_delete_removes_only_the_computers_disks(host: LibvirtHost, tmp_path: Path) -> None:
    own = tmp_path / "hg3_7-v1.qcow2"
    master = tmp_path / "linux-master-7-v1.qcow2"
    own.write_bytes(b"cow")
    master.write_bytes(b"master")
    g = _define(host, "hg3_img_7-v1", own, "52:54:00:30:00:01")
    g.start()
    libvirt_env.create_snapshot(host.connection(), "hg3_img_7-v1", "s1")
    remove_domain(g, image_state=False)
    assert not own.exists() and host.lookup_guest("hg3_img_7-v1") is None
    # a definition whose disk is not named <short>_* (here: a master) never loses that disk
    g = _define(host, "hg3_img_7-v2", master, "52:54:00:30:00:02")
    assert remove_computer_domains(host, "hg3", image_state=False) == ["hg3_img_7-v2"]
    assert master.exists() and host.lookup_guest("hg3_img_7-v2") is None
    # in the image state every disk of the captured domain goes
    g = _define(host, "hg3_img_7-v3", master, "52:54:00:30:00:03")
    remove_domain(g, image_state=True)
    assert not master.exists()
