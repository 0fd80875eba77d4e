"""`vcl-worker demo` (what `make demo` runs) completes the whole cycle and leaves nothing behind."""

from __future__ import annotations

import os
import re
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
    if "using libvirt's in-memory test:///default" in out.stdout:
        # No libvirtd: simulated domains, said plainly; nothing could answer.
        assert "test:///default: the domains are simulated" in out.stdout
    else:
        # The real guest answered at its private address, with a banner, after a measured time
        # (twice: the load and the reload of the captured image).
        addresses = re.findall(
            r"guest address: (\d+\.\d+\.\d+\.\d+) \(computer\.privateIPaddress\)", out.stdout
        )
        assert len(addresses) == 2 and addresses[0] == addresses[1], out.stdout[-4000:]
        assert len(re.findall(r"SSH banner: SSH-2\.0-\S+ on port 22", out.stdout)) == 2, out.stdout[-4000:]
        times = [float(t) for t in re.findall(r"time to SSH: (\d+\.\d) s from dispatch", out.stdout)]
        assert len(times) == 2 and all(0 < t < 600 for t in times), out.stdout[-4000:]
        assert re.search(r"domain type: (kvm|qemu) \((KVM|TCG)", out.stdout), out.stdout[-4000:]
    assert _demo_domains() == []
    assert list(Path("/var/lib/libvirt/images").glob("vcl-demo-*")) == []
