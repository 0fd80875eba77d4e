"""Masters and paths (issue 12), without libvirt: settings, the repository match, roots, vmdk extents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.config import Settings
from worker.devkit.reservations import make_reservation
from worker.hypervisors import domain_xml, naming, vmdk
from worker.hypervisors.domain_spec import check_vnc
from worker.hypervisors.errors import ImageCorruptError, InvalidInputError
from worker.hypervisors.layout import Layout


def test_repository_v1_never_matches_v10(tmp_path: Path) -> None:
    for name in ("img-v1", "img-v10", "img-v11", "img-v1x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.qcow2").write_text("x")
    (tmp_path / "img-v1" / "img-v1.qcow2.part").write_text("x")
    found = naming.find_repository_image_file_paths(str(tmp_path), "img-v1")
    assert [os.path.relpath(p, tmp_path) for p in found] == ["img-v1/img-v1.qcow2"]
    pattern = naming.repository_file_re("img-v1")
    assert (
        pattern.match("IMG-V1.QCOW2")
        and pattern.match("img-v1-s001.vmdk")
        and pattern.match("img-v1-flat.vmdk")
    )
    assert not pattern.match("img-v10.qcow2") and not pattern.match("img-v1-s001.qcow2")


def test_walked_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    repo = tmp_path / "repo"
    (repo / "img-v1").mkdir(parents=True)
    (repo / "img-v1" / "img-v1.qcow2").symlink_to(outside / "secret")
    with pytest.raises(InvalidInputError, match="outside"):
        naming.find_repository_image_file_paths(str(repo), "img-v1")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "img-v1.qcow2").symlink_to(outside / "secret")
    with pytest.raises(InvalidInputError, match="master candidate"):
        naming.master_image_file_path(str(ds), "img-v1", "qcow2")


@pytest.mark.parametrize("field", ["datastore_path", "vm_path", "repository_path"])
def test_vmprofile_path_outside_the_roots(tmp_path: Path, field: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = root / "link"
    link.symlink_to(outside)  # under the root by name, outside once resolved
    settings = Settings(allowed_roots=str(root))
    good = {"datastore_path": str(root), "vm_path": str(root / "vms"), "repository_path": str(root / "repo")}
    Layout(make_reservation(vmprofile=good), roots=settings.roots)
    for bad in (str(outside), str(link / "x")):
        with pytest.raises(
            InvalidInputError, match=f"vmprofile.{field.replace('_path', '').replace('_', '')}"
        ):
            Layout(make_reservation(vmprofile={**good, field: bad}), roots=settings.roots)
    assert list(outside.iterdir()) == []  # nothing created, walked or deleted there


def test_repository_root_setting_is_an_allowed_root(tmp_path: Path) -> None:
    settings = Settings(allowed_roots="/var/lib/libvirt/images", repository_root=str(tmp_path))
    assert str(tmp_path.resolve()) in settings.roots
    layout = Layout(
        make_reservation(vmprofile={"repository_path": str(tmp_path / "r")}), roots=settings.roots
    )
    assert layout.repository_path == str(tmp_path.resolve() / "r")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VCL_ALLOWED_ROOTS": "relative/dir"}, "VCL_ALLOWED_ROOTS must list absolute directories"),
        ({"VCL_ALLOWED_ROOTS": "/"}, "must not allow the whole file system"),
        ({"VCL_ALLOWED_ROOTS": "/var/../etc"}, "must not contain '..'"),
        ({"VCL_REPOSITORY_ROOT": "repo"}, "VCL_REPOSITORY_ROOT must list absolute"),
        ({"VCL_VNC_LISTEN": "localhost"}, "VCL_VNC_LISTEN must be an IP address"),
        ({"VCL_VNC_LISTEN": "0.0.0.0"}, "set VCL_VNC_PASSWORD"),
        ({"VCL_VNC_LISTEN": "::", "VCL_VNC_PASSWORD": "ninechars"}, "1-8 printable characters"),
    ],
)
def test_bad_path_and_vnc_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_vnc_password_is_written_but_never_shown() -> None:
    s = Settings.from_env({"VCL_VNC_LISTEN": "0.0.0.0", "VCL_VNC_PASSWORD": "s3cr3t"})
    assert "s3cr3t" not in repr(s)
    with pytest.raises(InvalidInputError, match="not loopback and no VNC password"):
        check_vnc("0.0.0.0", None)
    with pytest.raises(InvalidInputError, match="not an IP address"):
        check_vnc("vnc.example.org", "pw")
    spec = domain_xml.DomainSpec(
        name="n", uuid="u", domain_type="qemu", memory_mib=512, vcpus=1, disk_path="/d.qcow2",
        vnc_listen="0.0.0.0", vnc_password="s3cr3t",
    )  # fmt: skip
    assert 'passwd="s3cr3t"' in domain_xml.build_domain_xml(spec) and "s3cr3t" not in repr(spec)


def test_vmdk_extents_must_stay_in_the_image_directory(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    desc = d / "img.vmdk"
    for extent in ("/etc/shadow", "../secret", "sub/../../secret"):
        desc.write_text(
            f'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "{extent}" 0\n'
        )
        with pytest.raises(ImageCorruptError, match="outside the image's directory"):
            vmdk.check_descriptor(str(desc))
    desc.write_text('# Disk DescriptorFile\nRW 8 FLAT "img-flat.vmdk" 0\n')
    vmdk.check_descriptor(str(desc))
    with pytest.raises(ImageCorruptError, match="outside"):
        vmdk.check_info_extents(
            str(desc), {"format-specific": {"data": {"extents": [{"filename": "/etc/x"}]}}}
        )
    desc.write_text("no extents here\n")
    with pytest.raises(ImageCorruptError, match="neither a sparse extent nor a descriptor"):
        vmdk.check_descriptor(str(desc))


def test_computer_disk_outside_the_roots_is_never_deleted(tmp_path: Path) -> None:
    roots = ("/var/lib/libvirt/images",)
    assert naming.is_computer_disk("/var/lib/libvirt/images/vm1_3-v1.qcow2", "vm1", roots)
    assert not naming.is_computer_disk(str(tmp_path / "vm1_3-v1.qcow2"), "vm1", roots)
    assert not naming.is_computer_disk("/var/lib/libvirt/images/vm2_3-v1.qcow2", "vm1", roots)
