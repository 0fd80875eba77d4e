"""The operator's kit: the systemd units pass `systemd-analyze verify` (as installed, with their
drop-in), the env example is the settings' declaration, `vcl-worker install-units` installs it all."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from worker.config import Settings, setting_specs
from worker.devkit.commands import run_vcl_worker, venv_command
from worker.devkit.require import missing_service
from worker.install_units import (
    DEPLOY,
    ENV_EXAMPLE,
    UNIT_EXECUTABLE,
    UNITS,
    env_example,
    install_units,
    read_env_file,
)

EXE = venv_command("vcl-worker")


def verify(unit_dir: Path, *units: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of ``units`` in ``unit_dir`` (drop-ins there included); it needs no
    running systemd, only an existing ExecStart. It exits 0 on unknown keys and bad values but
    prints them, so callers check its output too."""
    if shutil.which("systemd-analyze") is None:
        missing_service("systemd-analyze is not installed (package systemd)")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    cmd = ["systemd-analyze", "verify", "--man=no", *(str(unit_dir / u) for u in units)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


def our_complaints(out: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines of verify's output about our units (other units on the machine may have their own)."""
    return [line for line in (out.stdout + out.stderr).splitlines() if "vcl-" in line]


def test_env_example_is_generated_from_the_settings() -> None:
    committed = (DEPLOY / ENV_EXAMPLE).read_text(encoding="utf-8")
    assert committed == env_example(), "regenerate it: python -m worker.install_units --update"
    for spec in setting_specs().values():
        assert f"\n#{spec.env}=" in committed, spec.env


def test_env_example_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    text = "\n".join(line[1:] if line.startswith("#VCL_") or line.startswith("#CELERY_") else line
                     for line in env_example().splitlines())  # fmt: skip
    env_file = tmp_path / "vcl-worker.env"
    env_file.write_text(text)
    env = read_env_file(env_file)
    assert set(env) == {spec.env for spec in setting_specs().values()}
    assert Settings.from_env(env) == Settings()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace(UNIT_EXECUTABLE, EXE)
        (tmp_path / unit).write_text(text)
    out = verify(tmp_path, "vcl-worker@kvmhost1.service", "vcl-dispatcher.service")
    assert out.returncode == 0, out.stdout + out.stderr
    assert our_complaints(out) == []


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing executable are reported."""
    text = (DEPLOY / "vcl-worker@.service").read_text().replace("ProtectHome=", "ProtectHomme=")
    (tmp_path / "vcl-worker@.service").write_text(text)
    out = verify(tmp_path, "vcl-worker@kvmhost1.service")
    assert any("Unknown key" in line and "ProtectHomme" in line for line in our_complaints(out))
    assert out.returncode != 0  # ExecStart still names /usr/local/bin/vcl-worker, absent here


def test_worker_unit_keeps_what_the_worker_needs() -> None:
    text = (DEPLOY / "vcl-worker@.service").read_text()
    lines = set(text.splitlines())
    assert f"ExecStart={UNIT_EXECUTABLE} worker --vmhost %i" in lines
    assert "EnvironmentFile=/etc/vcl-worker/vcl-worker.env" in lines
    assert {"Restart=on-failure", "KillMode=mixed", "ProtectSystem=strict"} <= lines
    assert "PrivateDevices=yes" not in lines  # the domain type check reads /dev/kvm
    assert "libvirtd.service" in text and "network-online.target" in text
    dispatcher = (DEPLOY / "vcl-dispatcher.service").read_text().splitlines()
    assert f"ExecStart={UNIT_EXECUTABLE} dispatch" in dispatcher
    assert "DynamicUser=yes" in dispatcher


def test_install_units_into_a_prefix(tmp_path: Path) -> None:
    lines = install_units(tmp_path, EXE)
    unit_dir = tmp_path / "etc/systemd/system"
    env_file = tmp_path / "etc/vcl-worker/vcl-worker.env"
    for unit in UNITS:
        text = (unit_dir / unit).read_text()
        assert UNIT_EXECUTABLE not in text and f"ExecStart={EXE} " in text
    assert env_file.read_text() == env_example()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert any("systemctl enable --now vcl-worker@" in line for line in lines)
    # An operator's env file is kept; the drop-in follows its roots.
    env_file.write_text(
        "VCL_ALLOWED_ROOTS=/srv/vcl/datastore:/var/lib/libvirt/images\nVCL_LOCK_DIR=/srv/vcl/locks\n"
    )
    install_units(tmp_path, EXE)
    assert env_file.read_text().startswith("VCL_ALLOWED_ROOTS=/srv/vcl/datastore")
    dropin = (unit_dir / "vcl-worker@.service.d/50-datastore.conf").read_text().splitlines()
    assert "ReadWritePaths=-/srv/vcl/datastore" in dropin and "ReadWritePaths=-/srv/vcl" in dropin
    out = verify(unit_dir, "vcl-worker@kvmhost1.service", "vcl-dispatcher.service")
    assert out.returncode == 0 and our_complaints(out) == [], out.stdout + out.stderr


def test_install_units_command(tmp_path: Path) -> None:
    out = run_vcl_worker(os.environ, "install-units", "--prefix", str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "systemctl enable --now vcl-worker@NAME" in out.stdout
    assert (tmp_path / "etc/systemd/system/vcl-worker@.service").is_file()
    assert (tmp_path / "etc/vcl-worker" / ENV_EXAMPLE).is_file()


@pytest.mark.parametrize("unit", UNITS)
def test_deploy_units_name_the_placeholder_executable(unit: str) -> None:
    """install_units rewrites exactly this path: a unit naming another would escape the rewrite."""
    execs = [line for line in (DEPLOY / unit).read_text().splitlines() if line.startswith("ExecStart=")]
    assert execs and all(line.startswith(f"ExecStart={UNIT_EXECUTABLE} ") for line in execs)
