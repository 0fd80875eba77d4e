"""Settings from the environment: defaults, parsing errors, round trip through to_env."""

from __future__ import annotations

from dataclasses import replace

import pytest

from worker.config import Settings, redact_url


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
