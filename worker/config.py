"""Every setting of the worker, read from the environment in one place.

Names follow the services they configure: ``VCL_*`` for the worker itself, ``CELERY_*`` for Celery.
Secrets (database and broker passwords) only ever live inside URLs; :func:`redact_url` hides them
before anything is logged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"setting {name} must be a boolean, got {raw!r}")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclass(frozen=True)
class Settings:
    # Database: the site's existing VCL database (schema vcl.sql), unchanged.
    database_url: str = "mysql+pymysql://root@127.0.0.1:3306/vcl"
    # Celery broker and result backend.
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    # Redis used for per-computer locks (defaults to the broker when that is Redis).
    lock_redis_url: str = "redis://127.0.0.1:6379/2"
    # libvirt connection of the host this worker runs on.
    libvirt_uri: str = "qemu:///system"
    # VNC listen address written into every domain.
    vnc_listen: str = "127.0.0.1"
    # Directory for cross-process file locks (master image materialisation).
    lock_dir: str = "/var/lib/vcl-worker/locks"
    # Seconds a guest gets to shut down on ACPI before it is destroyed (nova: 60 s / re-send 10 s).
    shutdown_timeout: int = 60
    shutdown_retry_interval: int = 10
    # qemu-img limits: heavy copies (convert) and cheap metadata calls (info/create).
    qemu_img_convert_timeout: int = 7200
    qemu_img_info_timeout: int = 60
    # Management node this dispatcher serves (managementnode.id).
    management_node_id: int = 1
    # Celery task time limits in seconds (soft, hard).
    load_soft_time_limit: int = 1800
    load_time_limit: int = 2100
    capture_soft_time_limit: int = 7200
    capture_time_limit: int = 7800
    # Seconds a task waits for another task's per-computer lock before it is retried.
    lock_wait: int = 300
    # Worker concurrency (prefork children). A load mostly waits on libvirt/QEMU start-up, so more
    # children than cores pays off; README "Benchmarks" (B2) has the sweep behind 8.
    worker_concurrency: int = 8
    log_level: str = "INFO"

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers unacked messages after this; must exceed the longest task."""
        return max(self.capture_time_limit, self.load_time_limit) + 600

    @property
    def computer_lock_ttl(self) -> int:
        """Per-computer lock TTL: above the longest hard time limit so a live task never loses it."""
        return max(self.capture_time_limit, self.load_time_limit) + 300

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables (for a worker subprocess): ``from_env`` inverted."""
        return {name: str(getattr(self, attr)) for name, attr in _ENV_NAMES.items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, str | int] = {}
        for name, attr in _ENV_NAMES.items():
            default = getattr(defaults, attr)
            values[attr] = _int(env, name, default) if isinstance(default, int) else env.get(name, default)
        return cls(**values)  # type: ignore[arg-type]


# Environment variable → Settings field; from_env and to_env both follow it.
_ENV_NAMES: dict[str, str] = {
    "VCL_DATABASE_URL": "database_url",
    "CELERY_BROKER_URL": "broker_url",
    "CELERY_RESULT_BACKEND": "result_backend",
    "VCL_LOCK_REDIS_URL": "lock_redis_url",
    "VCL_LIBVIRT_URI": "libvirt_uri",
    "VCL_VNC_LISTEN": "vnc_listen",
    "VCL_LOCK_DIR": "lock_dir",
    "VCL_SHUTDOWN_TIMEOUT": "shutdown_timeout",
    "VCL_SHUTDOWN_RETRY_INTERVAL": "shutdown_retry_interval",
    "VCL_QEMU_IMG_CONVERT_TIMEOUT": "qemu_img_convert_timeout",
    "VCL_QEMU_IMG_INFO_TIMEOUT": "qemu_img_info_timeout",
    "VCL_MANAGEMENT_NODE_ID": "management_node_id",
    "VCL_LOAD_SOFT_TIME_LIMIT": "load_soft_time_limit",
    "VCL_LOAD_TIME_LIMIT": "load_time_limit",
    "VCL_CAPTURE_SOFT_TIME_LIMIT": "capture_soft_time_limit",
    "VCL_CAPTURE_TIME_LIMIT": "capture_time_limit",
    "VCL_LOCK_WAIT": "lock_wait",
    "VCL_WORKER_CONCURRENCY": "worker_concurrency",
    "VCL_LOG_LEVEL": "log_level",
}


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings.from_env()


__all__ = ["Settings", "get_settings", "redact_url"]
