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
