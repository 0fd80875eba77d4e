"""Masters and paths (issue 12) on the real host: qemu-img, libvirtd and files under the datastore."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from pathlib import Path

import libvirt
import pytest

from worker.devkit import libvirt_env
from worker.hypervisors import domain_xml, qemuimg
from worker.hypervisors.domain_spec import domain_spec
from worker.hypervisors.drivers.kvm import KVMDriver
from worker.hypervisors.errors import ImageCorruptError, InvalidInputError, QemuImgError

from .conftest import files_in

pytestmark = pytest.mark.real


def _repo_image(repo: Path, name: str, pattern: int, size_mb: int) -> Path:
    return libvirt_env.make_master(repo / name / f"{name}.qcow2", size_mb=size_mb, pattern=pattern)


def test_v1_master_is_never_joined_with_v10(env) -> None:  # type: ignore[no-untyped-def]
    repo = env.datastore / "repo"
    res = env.reservation(
        imagerevision_imagename="linux-PathsBase-3081-v1", vmprofile={"repository_path": str(repo)}
    )
    v1 = _repo_image(repo, "linux-PathsBase-3081-v1", 0x11, 64)
    _repo_image(repo, "linux-PathsBase-3081-v10", 0x22, 32)
    _repo_image(repo, "linux-PathsBase-3081-v11", 0x33, 32)
    out = env.provisioner(res).load()
    assert out.master_copied
    # exactly v1's bytes and size: a prefix match would have concatenated v1, v10 and v11
    assert qemuimg.info(out.master_path, "qcow2").virtual_size == 64 * 1024 * 1024
    assert qemuimg.compare(out.master_path, str(v1), "qcow2", "qcow2")


def test_two_formats_of_one_image_are_refused_not_joined(env) -> None:  # type: ignore[no-untyped-def]
    repo = env.datastore / "repo"
    res = env.reservation(vmprofile={"repository_path": str(repo)})
    name = res.imagerevision_imagename
    _repo_image(repo, name, 0x11, 16)
    qemuimg.convert(
        str(repo / name / f"{name}.qcow2"), str(repo / name / f"{name}.raw"), "raw", src_fmt="qcow2"
    )
    before = files_in(env.datastore)
    with pytest.raises(ImageCorruptError, match="several files"):
        env.provisioner(res).load()
    assert files_in(env.datastore) == before  # no master, no overlay


@pytest.mark.parametrize("field", ["datastore_path", "vm_path", "repository_path"])
def test_vmprofile_path_outside_the_roots_touches_nothing(env, field: str) -> None:  # type: ignore[no-untyped-def]
    outside = Path(tempfile.mkdtemp(prefix="vcl-outside-"))
    try:
        (outside / "keep.qcow2").write_text("not ours")
        link = env.datastore / "escape"
        link.symlink_to(outside)
        for bad in (str(outside), str(link)):
            vmprofile = {"repository_path": str(env.datastore / "repo"), field: bad}
            res = env.reservation(vmprofile=vmprofile)
            env.master_for(res)
            before = files_in(env.datastore)
            with pytest.raises(InvalidInputError, match="outside the allowed roots"):
                env.provisioner(res).load()
            assert sorted(p.name for p in outside.iterdir()) == ["keep.qcow2"]
            assert files_in(env.datastore) == before
        link.unlink()
    finally:
        for p in outside.iterdir():
            p.unlink()
        outside.rmdir()


def test_overlay_is_private_and_the_domain_still_starts(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation()
    master = env.master_for(res)
    out = env.provisioner(res).load()
    st = os.stat(out.cow_path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (
        pwd.getpwnam("libvirt-qemu").pw_uid,
        grp.getgrnam("libvirt-qemu").gr_gid,
    )
    conn = libvirt.open("qemu:///system")
    try:
        assert conn.lookupByName(out.domain_name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
    assert stat.S_IMODE(os.stat(master).st_mode) == 0o444
    # a repository copy (capture's second copy) is not world-readable either
    copy = env.datastore / "repo" / "x" / "x.qcow2"
    KVMDriver().copy_virtual_disk(str(master), str(copy), "qcow2", source_format="qcow2")
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o640


def test_running_disk_is_not_read_past_its_lock(env) -> None:  # type: ignore[no-untyped-def]
    res = env.reservation()
    env.master_for(res)
    out = env.provisioner(res).load()
    dst = env.datastore / "copy" / "c.qcow2"
    with pytest.raises(QemuImgError, match="lock"):
        KVMDriver().copy_virtual_disk(out.cow_path, str(dst), "qcow2", source_format="qcow2")
    assert not dst.exists() and not Path(f"{dst}.part").exists()
    with pytest.raises(QemuImgError, match="lock"):
        qemuimg.info(out.cow_path, "qcow2")


def _vmdk(repo: Path, name: str, extent: str) -> Path:
    d = repo / name
    d.mkdir(parents=True, exist_ok=True)
    desc = d / f"{name}.vmdk"
    desc.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        f'RW 2048 FLAT "{extent}" 0\nddb.adapterType = "ide"\n'
    )
    return desc


def test_vmdk_with_an_extent_outside_its_directory_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    repo = env.datastore / "repo"
    secret = env.datastore / "secret.bin"
    secret.write_bytes(b"S" * 1024 * 1024)
    for extent in (str(secret), "../../secret.bin"):
        res = env.reservation(vmprofile={"repository_path": str(repo)})
        _vmdk(repo, res.imagerevision_imagename, extent)
        with pytest.raises(ImageCorruptError, match="outside the image's directory"):
            env.provisioner(res).load()
        assert not (env.images / f"{res.imagerevision_imagename}.qcow2").exists()
    # a vmdk whose extent is in its own directory is copied (and read as vmdk, not probed)
    res = env.reservation(vmprofile={"repository_path": str(repo)})
    name = res.imagerevision_imagename
    _vmdk(repo, name, f"{name}-flat.vmdk")
    (repo / name / f"{name}-flat.vmdk").write_bytes(b"\x5a" * 1024 * 1024)
    out = env.provisioner(res).load()
    assert out.master_copied and qemuimg.compare(
        out.master_path, str(repo / name / f"{name}.vmdk"), "qcow2", "vmdk"
    )


def test_vnc_password_reaches_libvirt_but_not_its_plain_xml(env) -> None:  # type: ignore[no-untyped-def]
    prov = env.provisioner()
    with pytest.raises(InvalidInputError, match="no VNC password"):
        domain_spec(prov.host, prov.layout, domain_type="qemu", disk_driver_name="qemu", vnc_listen="0.0.0.0")
    spec = domain_spec(
        prov.host,
        prov.layout,
        domain_type="qemu",
        disk_driver_name="qemu",
        vnc_listen="0.0.0.0",
        vnc_password="pw4vnc",
    )
    guest = prov.host.define(domain_xml.build_domain_xml(spec), autostart=False)
    try:
        dom = prov.host.connection().lookupByName(guest.name)
        assert "passwd='pw4vnc'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        assert "pw4vnc" not in guest.xml() and "pw4vnc" not in guest.xml(inactive=True)
    finally:
        guest.undefine()
