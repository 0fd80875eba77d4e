"""Settings from the environment: defaults, parsing and validation errors naming the variable, round
trip through to_env."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from worker.config import Settings, env_name, redact_url, setting_specs


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.libvirt_uri == "qemu:///system"
    assert s.vnc_listen == "127.0.0.1"
    assert s.visibility_timeout > max(s.load_time_limit, s.capture_time_limit)
    assert s.computer_lock_ttl > max(s.load_time_limit, s.capture_time_limit)


def test_round_trip_through_environment() -> None:
    s = replace(Settings(), database_url="sqlite:///x.db", shutdown_timeout=3, worker_concurrency=9)
    env = s.to_env()
    assert env["VCL_SHUTDOWN_TIMEOUT"] == "3" and env["CELERY_BROKER_URL"] == s.broker_url
    assert Settings.from_env(env) == s


def test_bad_integer_names_the_setting() -> None:
    with pytest.raises(ValueError, match="VCL_SHUTDOWN_TIMEOUT must be an integer, got 'soon'"):
        Settings.from_env({"VCL_SHUTDOWN_TIMEOUT": "soon"})


def test_passwords_are_redacted() -> None:
    assert redact_url("mysql+pymysql://vcl:s3cret@db:3306/vcl") == "mysql+pymysql://vcl:***@db:3306/vcl"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VCL_DOMAIN_TYPE": "xen"}, "VCL_DOMAIN_TYPE must be kvm, qemu or empty, got 'xen'"),
        ({"VCL_POST_LOAD": "sometimes"}, "VCL_POST_LOAD must be ssh, none or module:function"),
        ({"VCL_READY_TIMEOUT": "-1"}, "VCL_READY_TIMEOUT must be >= 0"),
    ],
)
def test_bad_guest_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_guest_settings_round_trip() -> None:
    s = replace(Settings(), domain_type="qemu", ready_timeout=90, post_load="none")
    assert Settings.from_env(s.to_env()) == s


def test_wait_for_guest_is_a_boolean() -> None:
    assert Settings.from_env({}).wait_for_guest is True
    assert Settings.from_env({"VCL_WAIT_FOR_GUEST": "no"}).wait_for_guest is False
    assert Settings.from_env(replace(Settings(), wait_for_guest=False).to_env()).wait_for_guest is False
    with pytest.raises(ValueError, match="VCL_WAIT_FOR_GUEST must be a boolean"):
        Settings.from_env({"VCL_WAIT_FOR_GUEST": "maybe"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VCL_MAX_DELIVERIES": "0"}, "setting VCL_MAX_DELIVERIES must be >= 1, got 0"),
        ({"VCL_LOCK_LEASE": "2"}, "setting VCL_LOCK_LEASE must be >= 3, got 2"),
        ({"VCL_TASK_MAX_RETRIES": "-1"}, "setting VCL_TASK_MAX_RETRIES must be >= 0"),
        ({"VCL_SWEEP_GRACE": "0"}, "setting VCL_SWEEP_GRACE must be >= 1"),
        (
            {"VCL_LOAD_SOFT_TIME_LIMIT": "9000"},
            "VCL_LOAD_SOFT_TIME_LIMIT=9000 must be > 0 and < VCL_LOAD_TIME_LIMIT=8100",
        ),
        ({"VCL_CAPTURE_SOFT_TIME_LIMIT": "7000"}, "must exceed VCL_QEMU_IMG_CONVERT_TIMEOUT=7200"),
        ({"VCL_RETRY_BACKOFF_MAX": "0"}, "VCL_RETRY_BACKOFF_MAX=0 must be > 0"),
        ({"VCL_ALLOWED_ROOTS": ""}, "VCL_ALLOWED_ROOTS must name at least one directory"),
        ({"VCL_BOOT_SNAPSHOTS": "maybe"}, "VCL_BOOT_SNAPSHOTS must be a boolean"),
    ],
)
def test_bad_limits_and_bounds_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_blank_numbers_are_defaults_and_blank_text_is_kept(tmp_path: Path) -> None:
    s = Settings.from_env({"VCL_SHUTDOWN_TIMEOUT": " ", "VCL_WAIT_FOR_GUEST": "", "VCL_HOST_ALIASES": ""})
    assert (s.shutdown_timeout, s.wait_for_guest, s.host_aliases) == (60, True, "")
    # An empty root list is allowed when the repository root names one.
    s = Settings.from_env({"VCL_ALLOWED_ROOTS": "", "VCL_REPOSITORY_ROOT": str(tmp_path)})
    assert s.allowed_roots == "" and s.roots == (str(tmp_path.resolve()),)


def test_vnc_password_never_appears_in_a_message_or_repr() -> None:
    for password in ("secretpassword", "bad\x01pw"):
        with pytest.raises(ValueError, match="VCL_VNC_PASSWORD must be 1-8 printable") as info:
            Settings.from_env({"VCL_VNC_LISTEN": "0.0.0.0", "VCL_VNC_PASSWORD": password})
        assert password not in str(info.value)
    assert "pw" not in repr(replace(Settings(), vnc_password="pw"))


def test_every_declared_variable_round_trips() -> None:
    env = Settings().to_env()
    assert set(env) == {spec.env for spec in setting_specs().values()}
    assert env_name("vnc_password") == "VCL_VNC_PASSWORD" and env["VCL_BOOT_SNAPSHOTS"] == "1"
    assert Settings.from_env(env) == Settings()


def test_settings_load_without_the_core() -> None:
    """The settings module checks roots with the neutral worker.rootdirs, never the core; the core
    still offers the same helpers (callers import them from worker.hypervisors.roots)."""
    code = (
        "import sys, worker.config; assert not [m for m in sys.modules if m.startswith('worker.hypervisors')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from worker import rootdirs
    from worker.hypervisors import roots

    for name in ("DEFAULT_ROOTS", "check_root", "parse_roots", "resolve_roots"):
        assert getattr(roots, name) is getattr(rootdirs, name), name
