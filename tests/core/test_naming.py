from __future__ import annotations

import os

import pytest

from worker.config import Settings
from worker.devkit.reservations import make_reservation
from worker.hypervisors import naming
from worker.hypervisors.errors import InvalidInputError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.provisioner import LibvirtProvisioner


def test_vcl_reference_examples() -> None:
    assert (
        naming.domain_name("vm4-22", 22, "CentOS 7 Base (64 bit VM)", 3081, 5)
        == "vm4-22_CentOS7Base64bitVM_3081-v5"
    )
    assert naming.domain_file_base_name("vm4-22", 3081, 5) == "vm4-22_3081-v5"
    assert naming.new_image_name("vmwarelinux", "CentOS7Base", 3081, 5) == "linux-CentOS7Base-3081-v5"
    assert naming.new_image_name("vmwarewinimage7", "Win 7_x", 1, 2) == "win7-Win7x-1-v2"
    assert (
        naming.copy_on_write_file_path("/var/lib/libvirt/images", "vm4-22_3081-v5", "qcow2")
        == "/var/lib/libvirt/images/vm4-22_3081-v5.qcow2"
    )
    assert naming.repository_image_file_path("/mnt/repository", "linux-CentOS7Base-3081-v5", "qcow2") == (
        "/mnt/repository/linux-CentOS7Base-3081-v5/linux-CentOS7Base-3081-v5.qcow2"
    )
    assert naming.repository_image_file_path(None, "x", "qcow2") is None


def test_domain_name_48_char_rules() -> None:
    long_short = "a" * 49
    assert naming.domain_name(long_short, 77, "pretty", 1, 1) == "77"
    # prefix + suffix > 48 -> short name alone
    short = "b" * 44  # prefix 45 + suffix "1-v1" (4) = 49
    assert naming.domain_name(short, 1, "pretty", 1, 1) == short
    # prefix + suffix == 48 -> prefix + suffix
    short = "c" * 43  # 44 + 4
    assert naming.domain_name(short, 1, "pretty", 1, 1) == f"{short}_1-v1"
    # room for middle < 5 -> prefix + suffix
    short = "d" * 40  # 41 + 4 = 45, middle max 2
    assert naming.domain_name(short, 1, "pretty", 1, 1) == f"{short}_1-v1"
    # middle truncated to fit exactly 48
    short = "e" * 30  # 31 + 4 = 35 -> middle max 12
    name = naming.domain_name(short, 1, "Pretty Name Longer Than Twelve", 1, 1)
    assert name == f"{short}_PrettyNameLo_1-v1"
    assert len(name) == 48
    for n in range(1, 60):
        assert len(naming.domain_name("x" * n, 5, "Some Pretty Image Name 123", 3081, 12)) <= 48


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "a/b",
        "it's",
        'q"uote',
        "<x>",
        "a b",
        "tab\there",
        "nl\n",
        "",
        "..",
        "-rf",
        "a;b",
        "$(x)",
    ],
)
def test_validate_name_rejects(bad: str) -> None:
    with pytest.raises(InvalidInputError) as ei:
        naming.validate_name(bad)
    assert repr(bad) in str(ei.value)


def test_validate_name_accepts_vcl_names() -> None:
    for ok in ["linux-CentOS7Base-3081-v5", "win7-Win7x-1-v2", "vm4-22", "img_1.2+x"]:
        assert naming.validate_name(ok) == ok


def test_validate_path() -> None:
    assert naming.validate_path("/var/lib/libvirt/images/") == "/var/lib/libvirt/images"
    for bad in ["relative/path", "/a/../b", "/a\nb", "", "/a'b"]:
        with pytest.raises(InvalidInputError):
            naming.validate_path(bad)


def test_mac_validation() -> None:
    assert naming.normalize_mac("52-54-00-AA-BB-CC") == "52:54:00:aa:bb:cc"
    for bad in ["52:54:00:aa:bb", "zz:54:00:aa:bb:cc", "01:00:5e:00:00:01", "5254.00aa.bbcc"]:
        with pytest.raises(InvalidInputError) as ei:
            naming.normalize_mac(bad)
        assert repr(bad) in str(ei.value)


def test_master_find_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path
    built = naming.master_image_file_path(str(ds), "linux-X-1-v1", "qcow2")
    assert built == f"{ds}/linux-X-1-v1.qcow2"
    sub = ds / "sub"
    sub.mkdir()
    (sub / "LINUX-X-1-V1.img").write_bytes(b"x")  # recursive + case-insensitive
    (ds / "linux-X-1-v1.xml").write_text("<domain/>")
    (ds / "linux-X-1-v1.reference").write_text("")
    (ds / "linux-X-1-v1.qcow2.part").write_text("")
    assert naming.master_image_file_path(str(ds), "linux-X-1-v1", "qcow2") == str(sub / "LINUX-X-1-V1.img")
    (ds / "linux-X-1-v1.qcow2").write_bytes(b"y")  # two candidates -> built path
    assert naming.master_image_file_path(str(ds), "linux-X-1-v1", "qcow2") == f"{ds}/linux-X-1-v1.qcow2"


def test_repository_find_rules(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path
    d = repo / "img-v1"
    d.mkdir()
    for f in [
        "img-v1.vmdk",
        "img-v1-s001.vmdk",
        "img-v1-s002.vmdk",
        "img-v1.vmx",
        "img-v1.xml",
        "img-v1.txt",
    ]:
        (d / f).write_text("x")
    (d / "img-v1noext").write_text("x")
    found = naming.find_repository_image_file_paths(str(repo), "img-v1")
    assert [os.path.basename(p) for p in found] == ["img-v1-s001.vmdk", "img-v1-s002.vmdk"]
    assert naming.find_repository_image_file_paths(None, "img-v1") == []


def test_provisioner_paths_and_validation() -> None:
    res = make_reservation()
    p = LibvirtProvisioner(res, settings=Settings(), host=LibvirtHost("test:///default"))
    assert p.get_domain_name() == "vm4-22_CentOS7Base64bitVM_3081-v5"
    assert p.layout.cow_path == "/var/lib/libvirt/images/vm4-22_3081-v5.qcow2"
    assert p.layout.master_xml_path() == "/var/lib/libvirt/images/linux-CentOS7Base-3081-v5.xml"
    assert p.get_new_image_name() == "linux-CentOS7Base64bitVM-3081-v5"
    with pytest.raises(InvalidInputError, match=r"\.\./x"):
        LibvirtProvisioner(
            make_reservation(imagerevision_imagename="../x"),
            settings=Settings(),
            host=LibvirtHost("test:///default"),
        )
    with pytest.raises(InvalidInputError, match="vmpath"):
        LibvirtProvisioner(
            make_reservation(vmprofile={"vm_path": "rel"}),
            settings=Settings(),
            host=LibvirtHost("test:///default"),
        )
    with pytest.raises(InvalidInputError, match="eth0"):
        LibvirtProvisioner(
            make_reservation(eth0_mac="nope"), settings=Settings(), host=LibvirtHost("test:///default")
        )
