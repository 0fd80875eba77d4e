"""`vcl-worker demo` (what `make demo` runs) completes the whole cycle and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from worker.devkit.commands import venv_command
from worker.devkit.libvirt_env import list_domain_names


def _demo_domains() -> list[str]:
    return list_domain_names("demovm1_")


def test_demo_runs_the_whole_cycle() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCL_", "CELERY_"))}
    out = subprocess.run(
        [venv_command("vcl-worker"), "demo"], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "demo cycle complete" in out.stdout
    for step in ("load (new)", "capture (image)", "reload (inserted by capture)", "maintenance"):
        assert step in out.stdout
    assert out.stdout.count("SUCCESS") >= 4
    assert _demo_domains() == []
    assert list(Path("/var/lib/libvirt/images").glob("vcl-demo-*")) == []
