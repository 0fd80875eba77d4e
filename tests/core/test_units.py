"""Fast units: libvirt error mapping/reconnect and Guest on test:///default, qemu-img, domain XML."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import libvirt
import pytest

from worker.devkit import libvirt_env
from worker.hypervisors import domain_xml as dx
from worker.hypervisors import qemuimg
from worker.hypervisors.drivers.base import select_driver
from worker.hypervisors.errors import (
    DomainNotFoundError,
    LibvirtPermanentError,
    LibvirtTransientError,
    NoDriverError,
    QemuImgError,
)
from worker.hypervisors.host import LibvirtHost, map_libvirt_error


def _err(code: int, domain: int, msg: str = "boom") -> libvirt.libvirtError:
    e = libvirt.libvirtError(msg)
    e.err = (code, domain, msg, 2, None, None, None, 0, 0)
    return e


def test_map_libvirt_error() -> None:
    assert isinstance(
        map_libvirt_error(_err(libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU)), DomainNotFoundError
    )
    for code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR):
        for dom in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            assert isinstance(map_libvirt_error(_err(code, dom)), LibvirtTransientError)
    assert isinstance(
        map_libvirt_error(_err(libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE)), LibvirtTransientError
    )
    e = map_libvirt_error(_err(libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN, "bad xml"), "defineXML")
    assert isinstance(e, LibvirtPermanentError) and "defineXML: bad xml" in str(e)
    assert isinstance(
        map_libvirt_error(_err(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU)), LibvirtPermanentError
    )


class _FlakyConn:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.broken = False

    def getLibVersion(self) -> int:
        if self.broken:
            raise _err(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "client socket is closed")
        return int(self.real.getLibVersion())

    def close(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_reconnect_after_broken_connection() -> None:
    opened: list[_FlakyConn] = []

    def opener(uri: str) -> _FlakyConn:
        c = _FlakyConn(libvirt.open(uri))
        opened.append(c)
        return c

    host = LibvirtHost("test:///default", opener=opener)
    assert host.connection() is opened[0]
    assert host.connection() is opened[0]  # reused while the ping works
    opened[0].broken = True
    assert host.connection() is opened[1]  # reopened lazily
    assert host.lookup_guest("test") is not None
    with pytest.raises(LibvirtTransientError), host.errors("x"):
        raise _err(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_REMOTE)
    assert host._conn is None  # dropped, reopened on next call
    assert host.lookup_guest("nope") is None


def test_guest_on_test_driver() -> None:
    host = LibvirtHost("test:///default")
    xml = dx.build_domain_xml(
        dx.DomainSpec(
            name="unit1",
            uuid=dx.computer_uuid(1, "unit1"),
            domain_type="test",
            memory_mib=512,
            vcpus=3,
            disk_path="/nonexistent/unit1.qcow2",
            nics=(dx.NicSpec("network", "default", "52:54:00:00:00:09"),),
        )
    )
    g = host.define(xml, autostart=False)
    # redefine with the same UUID updates in place
    g = host.define(xml, autostart=False)
    assert g.power_status() == "off"
    g.start()
    g.start()
    assert g.power_status() == "on"
    libvirt_env.create_snapshot(host.connection(), "unit1", "s1", "first")
    assert libvirt_env.snapshot_names(host.connection(), "unit1") == ["s1"]
    assert g.shutdown(timeout=2, retry_interval=1) is True  # test driver shuts down at once
    g.power_off()  # already off: success
    assert g.mac_addresses() == ["52:54:00:00:00:09"]
    assert g.disk_paths() == ["/nonexistent/unit1.qcow2"]
    g.undefine()  # NVRAM flag unsupported on the test driver: falls back
    assert host.lookup_guest("unit1") is None


def test_test_uri_gets_the_simulated_driver_only() -> None:
    driver = select_driver(LibvirtHost("test:///default"))
    assert driver.name == "Simulated"
    assert driver.get_domain_type(LibvirtHost("test:///default")) == "test"


def test_no_driver_for_an_unknown_hypervisor() -> None:
    class XenHost:
        uri = "xen:///system"

        def hypervisor_type(self) -> str:
            return "Xen"

    with pytest.raises(NoDriverError, match="KVM: probe failed; Simulated: probe failed"):
        select_driver(XenHost())  # type: ignore[arg-type]


def test_domain_xml_variants_validate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for vcpus in (1, 2, 3, 5, 8):
        for bus in ("ide", "virtio", "sata", "scsi"):
            spec = dx.DomainSpec(
                name="v",
                uuid=dx.computer_uuid(vcpus, bus),
                domain_type="kvm",
                memory_mib=dx.memory_mib(128),
                vcpus=vcpus,
                disk_path="/x/v.qcow2",
                disk_bus=bus,
                disk_cache="none",
                clock_offset="localtime",
                description="image: a & <b>\n",
                nics=(dx.NicSpec("bridge", "br0", "52:54:00:00:00:01", "virtio"),),
            )
            xml = dx.build_domain_xml(spec)
            libvirt_env.validate_domain_xml(xml, tmp_path)
            cpu = dx.ParsedDomain.parse(xml).cpu
            assert cpu is not None and cpu.sockets is not None and cpu.cores is not None
            assert cpu.sockets * cpu.cores == vcpus and cpu.sockets <= 2 and "524288" in xml
    assert dx.disk_target_dev("ide") == "hda" and dx.disk_target_dev("virtio") == "vda"
    assert dx.disk_target_dev("sata") == "sda"
    master = (
        '<domain><devices><disk device="disk"><target dev="vda" bus="virtio"/></disk>'
        '<interface><model type="e1000"/></interface></devices></domain>'
    )
    parsed = dx.ParsedDomain.parse_or_none(master)
    assert parsed is not None and parsed.disk_bus == "virtio" and parsed.nic_model == "e1000"
    assert dx.ParsedDomain.parse_or_none("not xml") is None


def test_qemuimg_convert_part_and_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = libvirt_env.make_master(tmp_path / "src.qcow2", size_mb=16, pattern=0x11)
    dst = tmp_path / "out" / "dst.qcow2"
    pct: list[float] = []
    qemuimg.convert(str(src), str(dst), "qcow2", compat="0.10", progress=pct.append, mode=0o444)
    assert dst.exists() and not (tmp_path / "out" / "dst.qcow2.part").exists()
    assert pct and pct[-1] == 100.0
    assert qemuimg.info(str(dst)).raw["format-specific"]["data"]["compat"] == "0.10"
    assert qemuimg.compare(str(src), str(dst))
    assert qemuimg.check(str(dst)).ok
    # compat rejected by the raw format -> retried without it
    raw = tmp_path / "dst.raw"
    qemuimg.convert(str(src), str(raw), "raw", compat="0.10")
    assert qemuimg.info(str(raw)).format == "raw"
    # failure: missing source, nothing left behind, stderr in the message
    with pytest.raises(QemuImgError, match="nosuch"):
        qemuimg.convert(str(tmp_path / "nosuch.qcow2"), str(tmp_path / "bad.qcow2"), "qcow2")
    assert not any(p.name.startswith("bad.qcow2") for p in tmp_path.iterdir())


def test_qemuimg_overlay_requires_backing_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = libvirt_env.make_master(tmp_path / "base.qcow2", size_mb=8)
    cow = tmp_path / "cow.qcow2"
    qemuimg.create_overlay(str(base), str(cow), "qcow2")
    inf = qemuimg.info(str(cow))
    assert inf.backing_format == "qcow2" and inf.full_backing_filename == str(base)
    with pytest.raises(QemuImgError):
        qemuimg.create_overlay(str(tmp_path / "missing.qcow2"), str(tmp_path / "c2.qcow2"), "qcow2")
    assert not (tmp_path / "c2.qcow2").exists()
    os.chmod(base, 0o644)
    assert subprocess.run(["qemu-img", "info", str(cow)], capture_output=True).returncode == 0
