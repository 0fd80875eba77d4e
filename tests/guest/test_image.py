"""The offline-built guest image: its facts, its cache, one build under concurrent callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest.conftest import TIMINGS
from worker.devkit.guest_image import GuestImage, ensure_guest_image

pytestmark = pytest.mark.guest

_CHILD = "import json,sys; from worker.devkit.guest_image import ensure_guest_image as e; " \
    "g=e(sys.argv[1]); print(json.dumps([g.inputs_hash, g.cached, g.content_hash]))"  # fmt: skip


def test_image_facts(guest_image: GuestImage, tmp_path: Path) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(guest_image.path)], check=True, capture_output=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 128 * 1024 * 1024
    assert "backing-filename" not in info
    assert info["actual-size"] < 24 * 1024 * 1024
    first = tmp_path / "sector0"
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1",
         f"if={guest_image.path}", f"of={first}"],
        check=True,
    )  # fmt: skip
    mbr = first.read_bytes()
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[446 + 4] == 0x83 and mbr[446] == 0x80  # one bootable Linux partition
    assert int.from_bytes(mbr[446 + 8 : 446 + 12], "little") == 2048  # starting at 1 MiB
    assert guest_image.public_key.startswith("ssh-ed25519 ")
    assert oct(guest_image.private_key.stat().st_mode & 0o777) == "0o600"
    assert guest_image.path.stat().st_mode & 0o004  # readable by libvirt-qemu


def test_cold_build_once_under_concurrency_then_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(cache)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    TIMINGS["image build cold (2 concurrent callers)"] = time.monotonic() - start
    assert all(p.returncode == 0 for p in procs)
    assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
    assert sorted(r[1] for r in results) == [False, True]  # one built, the other waited and reused
    assert len(list((cache / "images").iterdir())) == 1
    assert not list((cache / "tmp").iterdir())

    t0 = time.monotonic()
    img = ensure_guest_image(cache)
    cached = time.monotonic() - t0
    TIMINGS["image cached call"] = cached
    assert img.cached and img.inputs_hash == results[0][0]
    assert cached < 1.0


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker.devkit.guest_image import default_cache_dir

    monkeypatch.setenv("VCL_GUEST_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("VCL_GUEST_CACHE")
    assert default_cache_dir() == Path("/var/cache/vcl-worker/guest")
    assert os.environ.get("VCL_GUEST_CACHE") is None
