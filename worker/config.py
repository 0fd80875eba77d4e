"""Every setting of the worker, read from the environment in one place.

Names follow the services they configure: ``VCL_*`` for the worker itself, ``CELERY_*`` for Celery.
Secrets (database and broker passwords) only ever live inside URLs; :func:`redact_url` hides them
before anything is logged.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    raise ValueError(f"setting {name} must be a boolean (1/0, yes/no), got {raw!r}")


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
    # VNC listen address written into every domain: an IP address; anything but loopback needs
    # vnc_password (else every guest's console is open to the network).
    vnc_listen: str = "127.0.0.1"
    # VNC password written into each domain's <graphics passwd=…> (at most 8 characters: the VNC
    # protocol ignores the rest). Never logged: kept out of repr.
    vnc_password: str = field(default="", repr=False)
    # Directories vmprofile paths (datastore, vmpath, repository) must lie under, ':'-separated; the
    # repository root below is added to them. Nothing outside is ever created, walked or deleted.
    allowed_roots: str = "/var/lib/libvirt/images"
    # The image repository of this site (a vmprofile.repositorypath lies under it); "" = none.
    repository_root: str = ""
    # Other names of this VM host in VCL (comma-separated) when its computer.hostname is not the OS
    # host name: `vcl-worker reap --apply` only acts for a --vmhost that names this host.
    host_aliases: str = ""
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
    # Celery task time limits in seconds (soft, hard). A load may wait for another load's master
    # copy (per-image lock, up to qemu_img_convert_timeout) before it starts its own work, so its
    # soft limit lies above the copy timeout; a capture makes two copies (master, repository).
    load_soft_time_limit: int = 7800
    load_time_limit: int = 8100
    capture_soft_time_limit: int = 15000
    capture_time_limit: int = 15600
    # Seconds a task waits for another task's per-computer lock before it is retried.
    lock_wait: int = 300
    # Seconds the per-computer lock lives unless its holder renews it (a heartbeat renews it every
    # third of this): a child killed by a hard time limit, or a release lost to a Redis error, leaves
    # the computer locked for at most this long instead of the longest time limit.
    lock_lease: int = 120
    # Celery retries of a transient error (database, Redis, libvirt connection, busy computer):
    # exponential backoff 2, 4, 8 ... s with full jitter, capped at retry_backoff_max; 10 retries
    # reach the cap and ride out a database outage of ~20 minutes.
    task_max_retries: int = 10
    retry_backoff_max: int = 300
    # Deliveries of one task attempt (same task id and retry number) before it is failed instead of
    # run: a reservation that kills its worker child (late ack + requeue) is not redelivered forever.
    max_deliveries: int = 5
    # Seconds a claimed (pending) request may wait for its task to be sent and known to Celery
    # before the dispatcher's sweep re-enqueues it once (then fails it).
    sweep_grace: int = 120
    # Domain type: "" picks kvm only where hardware virtualization runs unmodified guests, else qemu (TCG).
    domain_type: str = ""
    # Seconds a loaded guest gets to answer on its connect port; 0 = the image's reloadtime (minutes).
    ready_timeout: int = 0
    # A load is done only when the guest answers on its connect port. Off only for tests of disk and
    # database mechanics on blank masters (no OS to answer); never on a site.
    wait_for_guest: bool = True
    # Post-load step after the guest answers: "ssh" (hostname + currentimage.txt over SSH when the
    # management node has keys), "none", or "package.module:function" of the site's own.
    post_load: str = "ssh"
    # Worker concurrency (prefork children). A load mostly waits on libvirt/QEMU start-up, so more
    # children than cores pays off; README "Benchmarks" (B2) has the sweep behind 8.
    worker_concurrency: int = 8
    # Boot snapshots (README "Boot snapshots"): a reload of the revision a computer last booted
    # restores its saved post-boot memory state onto a fresh copy of the saved overlay instead of
    # booting. Off: every load boots cold and no snapshot is saved.
    boot_snapshots: bool = True
    log_level: str = "INFO"

    @property
    def roots(self) -> tuple[str, ...]:
        """The allowed roots resolved (symlinks followed): VCL_ALLOWED_ROOTS plus VCL_REPOSITORY_ROOT."""
        from worker.hypervisors.roots import parse_roots, resolve_roots

        extra = (self.repository_root,) if self.repository_root.strip() else ()
        return resolve_roots((*parse_roots(self.allowed_roots), *extra))

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
        return {name: _env_text(getattr(self, attr)) for name, attr in _ENV_NAMES.items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, str | int | bool] = {}
        for name, attr in _ENV_NAMES.items():
            default = getattr(defaults, attr)
            if isinstance(default, bool):
                values[attr] = _bool(env, name, default)
            elif isinstance(default, int):
                values[attr] = _int(env, name, default)
            else:
                values[attr] = env.get(name, default)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that would only fail later, naming the variable."""
        if self.domain_type not in {"", "kvm", "qemu"}:
            raise ValueError(f"setting VCL_DOMAIN_TYPE must be kvm, qemu or empty, got {self.domain_type!r}")
        if self.post_load not in {"ssh", "none"} and ":" not in self.post_load:
            raise ValueError(
                f"setting VCL_POST_LOAD must be ssh, none or module:function, got {self.post_load!r}"
            )
        if self.ready_timeout < 0:
            raise ValueError(f"setting VCL_READY_TIMEOUT must be >= 0, got {self.ready_timeout}")
        self._validate_limits()
        self._validate_paths()
        self._validate_vnc()

    def _validate_limits(self) -> None:
        """Time limits, retries and leases must agree with each other (issue: a load's soft limit
        below the master copy it may wait for; a backoff cap never reached)."""
        for kind in ("load", "capture"):
            soft = getattr(self, f"{kind}_soft_time_limit")
            hard = getattr(self, f"{kind}_time_limit")
            name = f"VCL_{kind.upper()}"
            if not 0 < soft < hard:
                raise ValueError(
                    f"settings {name}_SOFT_TIME_LIMIT={soft} must be > 0 and < {name}_TIME_LIMIT={hard}"
                )
            if soft <= self.qemu_img_convert_timeout:
                raise ValueError(
                    f"setting {name}_SOFT_TIME_LIMIT={soft} must exceed VCL_QEMU_IMG_CONVERT_TIMEOUT="
                    f"{self.qemu_img_convert_timeout}: the task may wait for (or make) a full copy"
                )
        if (
            self.task_max_retries < 0
            or self.max_deliveries < 1
            or self.sweep_grace < 1
            or self.lock_lease < 3
        ):
            raise ValueError(
                "settings VCL_TASK_MAX_RETRIES >= 0, VCL_MAX_DELIVERIES >= 1, VCL_SWEEP_GRACE >= 1 and "
                "VCL_LOCK_LEASE >= 3 are required"
            )
        if not 0 < self.retry_backoff_max < self.visibility_timeout:
            # A countdown beyond the visibility timeout makes Redis hand the waiting retry to a
            # second worker.
            raise ValueError(
                f"setting VCL_RETRY_BACKOFF_MAX={self.retry_backoff_max} must be > 0 and below the "
                f"Redis visibility timeout ({self.visibility_timeout} s)"
            )

    def _validate_paths(self) -> None:
        from worker.hypervisors.roots import check_root, parse_roots

        roots = parse_roots(self.allowed_roots)
        if not roots and not self.repository_root.strip():
            raise ValueError("setting VCL_ALLOWED_ROOTS must name at least one directory")
        for root in roots:
            check_root(root, "VCL_ALLOWED_ROOTS")
        if self.repository_root.strip():
            check_root(self.repository_root.strip(), "VCL_REPOSITORY_ROOT")

    def _validate_vnc(self) -> None:
        try:
            listen = ipaddress.ip_address(self.vnc_listen.strip())
        except ValueError as exc:
            raise ValueError(
                f"setting VCL_VNC_LISTEN must be an IP address (e.g. 127.0.0.1), got {self.vnc_listen!r}"
            ) from exc
        pw = self.vnc_password
        # The password itself never appears in a message: only what is wrong with it.
        if pw and (len(pw) > 8 or any(ord(ch) < 32 or ord(ch) == 127 for ch in pw)):
            raise ValueError(
                "setting VCL_VNC_PASSWORD must be 1-8 printable characters (VNC uses only 8), "
                f"got {len(pw)} characters"
            )
        if not listen.is_loopback and not pw:
            raise ValueError(
                f"setting VCL_VNC_LISTEN={self.vnc_listen} is not a loopback address: "
                "set VCL_VNC_PASSWORD so the guests' consoles are not open to the network"
            )


# Environment variable → Settings field; from_env and to_env both follow it.
_ENV_NAMES: dict[str, str] = {
    "VCL_DATABASE_URL": "database_url",
    "CELERY_BROKER_URL": "broker_url",
    "CELERY_RESULT_BACKEND": "result_backend",
    "VCL_LOCK_REDIS_URL": "lock_redis_url",
    "VCL_LIBVIRT_URI": "libvirt_uri",
    "VCL_VNC_LISTEN": "vnc_listen",
    "VCL_VNC_PASSWORD": "vnc_password",
    "VCL_ALLOWED_ROOTS": "allowed_roots",
    "VCL_REPOSITORY_ROOT": "repository_root",
    "VCL_HOST_ALIASES": "host_aliases",
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
    "VCL_LOCK_LEASE": "lock_lease",
    "VCL_TASK_MAX_RETRIES": "task_max_retries",
    "VCL_RETRY_BACKOFF_MAX": "retry_backoff_max",
    "VCL_MAX_DELIVERIES": "max_deliveries",
    "VCL_SWEEP_GRACE": "sweep_grace",
    "VCL_WORKER_CONCURRENCY": "worker_concurrency",
    "VCL_DOMAIN_TYPE": "domain_type",
    "VCL_READY_TIMEOUT": "ready_timeout",
    "VCL_POST_LOAD": "post_load",
    "VCL_WAIT_FOR_GUEST": "wait_for_guest",
    "VCL_BOOT_SNAPSHOTS": "boot_snapshots",
    "VCL_LOG_LEVEL": "log_level",
}


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings.from_env()


__all__ = ["Settings", "get_settings", "redact_url"]
