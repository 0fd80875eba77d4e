"""qemu-img wrapper contracts: one runner, validated JSON, -f when known, limits, qemu-img's message."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.devkit import libvirt_env
from worker.hypervisors import qemuimg
from worker.hypervisors.drivers.kvm import KVMDriver
from worker.hypervisors.errors import ImageCorruptError, QemuImgError


def _fake_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, rc: int = 0) -> Path:
    """A qemu-img stand-in printing ``stdout``; it logs its argv and CPU/address-space limits."""
    log = tmp_path / "fake.log"
    (tmp_path / "fake.out").write_text(stdout)
    script = tmp_path / "fake-qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$(ulimit -t) $(ulimit -v) $*" >> {log}\n'
        f"cat {tmp_path / 'fake.out'}\n"
        "echo 'qemu-img: fake complaint' >&2\n"
        f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(qemuimg, "QEMU_IMG", str(script))
    return log


@pytest.mark.parametrize(
    "out, missing",
    [
        ('{"virtual-size": 1048576}', "format"),
        ('{"format": "qcow2"}', "virtual-size"),
        ("[1]", "JSON object"),
    ],
)
def test_info_output_is_validated(tmp_path, monkeypatch, out: str, missing: str) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "x.qcow2"
    img.write_bytes(b"")
    _fake_qemu_img(tmp_path, monkeypatch, out)
    with pytest.raises(QemuImgError, match=missing):
        qemuimg.info(str(img), "qcow2")


def test_info_passes_format_and_limits(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "x.img"
    img.write_bytes(b"")
    log = _fake_qemu_img(tmp_path, monkeypatch, '{"format": "raw", "virtual-size": 0}')
    assert qemuimg.info(str(img), "raw").format == "raw"
    assert qemuimg.info(str(img), limits=qemuimg.REPOSITORY_LIMITS).actual_size is None
    trusted, limited = log.read_text().splitlines()
    assert trusted.endswith(f"info --output=json -f raw {img}")  # image lock respected: no -U
    cpu, as_kib, *argv = limited.split()
    assert (cpu, as_kib) == ("30", str((1 << 30) // 1024))
    assert "-f" not in argv  # unknown format: probed, but only under the limits


def test_check_output_is_validated(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fake_qemu_img(tmp_path, monkeypatch, "not json")
    with pytest.raises(QemuImgError, match="unparsable"):
        qemuimg.check("/x.qcow2", "qcow2")
    _fake_qemu_img(tmp_path, monkeypatch, '{"filename": "/x.qcow2"}')
    with pytest.raises(QemuImgError, match="check-errors"):
        qemuimg.check("/x.qcow2", "qcow2")
    _fake_qemu_img(tmp_path, monkeypatch, '{"check-errors": 0, "leaks": 2}', rc=3)
    res = qemuimg.check("/x.qcow2", "qcow2")
    assert not res.ok and res.leaks == 2 and res.corruptions == 0


def test_nonzero_exit_keeps_qemu_img_message(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "x.qcow2"
    img.write_bytes(b"")
    _fake_qemu_img(tmp_path, monkeypatch, "", rc=1)
    with pytest.raises(QemuImgError, match=r"exit 1.*fake complaint") as ei:
        qemuimg.info(str(img))
    assert ei.value.rc == 1 and "fake complaint" in ei.value.stderr


def test_garbage_master_is_corrupt_with_qemu_img_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(1 << 16))
    with pytest.raises(ImageCorruptError, match="not in qcow2 format"):
        KVMDriver().validate_master(str(junk), "qcow2")
    # as raw it reads fine: a non-zero exit is about the format asked for, not the file alone
    assert KVMDriver().validate_master(str(junk), "raw").format == "raw"


def test_format_from_extension_and_explicit_convert_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert qemuimg.format_from_extension("/r/a.QCOW2") == "qcow2"
    assert qemuimg.format_from_extension("/r/a-s001.vmdk") == "vmdk"
    assert qemuimg.format_from_extension("/r/a.img") is None
    src = libvirt_env.make_master(tmp_path / "src.qcow2", size_mb=8, pattern=0x22)
    # -f raw on a qcow2 file copies its bytes, proving the given format is used, never a probe
    qemuimg.convert(str(src), str(tmp_path / "bytes.raw"), "raw", src_fmt="raw")
    assert (tmp_path / "bytes.raw").read_bytes()[:4] == b"QFI\xfb"
    assert qemuimg.compare(str(src), str(tmp_path / "bytes.raw"), "qcow2", "raw") is False


_CONVERT_FOREVER = """
import shutil, sys
from worker.hypervisors import qemuimg
if sys.argv[3] == "prctl":  # the fallback: no setpriv on the host
    real = shutil.which
    shutil.which = lambda name, *a, **k: None if name == "setpriv" else real(name, *a, **k)
qemuimg.convert(sys.argv[1], sys.argv[2], "qcow2", src_fmt="raw", timeout=600)
"""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("how", ["setpriv", "prctl"])
def test_qemu_img_dies_with_its_parent(tmp_path: Path, how: str) -> None:
    """kill -9 of the process running a long ``qemu-img convert`` (its source a FIFO nobody writes:
    qemu-img blocks for ever) takes qemu-img with it, through its parent-death signal."""
    if not qemuimg.available():
        pytest.skip("qemu-img not installed")
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    parent = subprocess.Popen(
        [sys.executable, "-c", _CONVERT_FOREVER, str(fifo), str(tmp_path / "out.qcow2"), how],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 20
        child = None
        while child is None and time.monotonic() < deadline:
            named = [c for c in _children(parent.pid) if "qemu-img" in _cmdline(c)]
            child = named[0] if named else None
            time.sleep(0.05)
        assert child is not None, "qemu-img never started"
        time.sleep(0.3)
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone_by = time.monotonic() + 5
        while _alive(child) and time.monotonic() < gone_by:
            time.sleep(0.05)
        if _alive(child):
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"qemu-img ({how}) outlived its killed parent")
    finally:
        with contextlib.suppress(ProcessLookupError):
            parent.kill()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
