"""Every setting of the worker, read from the environment in one place.

Names follow the services they configure: ``VCL_*`` for the worker itself, ``CELERY_*`` for Celery.
Secrets (database and broker passwords) only ever live inside URLs; :func:`redact_url` hides them
before anything is logged.

Each setting is declared once, as a :class:`Settings` field made by :func:`setting` (default,
environment variable, meaning, check): reading (:meth:`Settings.from_env`), writing
(:meth:`Settings.to_env`), validation messages and README's table (:func:`worker.settings_doc.settings_table`;
regenerate it with ``python -m worker.settings_doc --update-readme README.md``) all follow from it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from worker.rootdirs import parse_roots, resolve_roots, root_problem

T = TypeVar("T")

#: Problem with a value as the text after ``setting NAME`` ("must be …, got …"), or None when fine.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class SettingSpec:
    """What a setting is besides its field's name, type and default."""

    env: str  # its environment variable
    doc: str  # its meaning, as README's table shows it
    check: Check | None = None  # its own constraint; rules between settings are in Settings.validate


_SPEC = "vcl_setting"  # the key of a SettingSpec in a field's metadata


def setting(
    default: T, *, env: str, doc: str, check: Callable[[T], str | None] | None = None, secret: bool = False
) -> T:
    """A :class:`Settings` field; a ``secret`` is kept out of repr (its check must not quote it)."""
    return field(default=default, repr=not secret, metadata={_SPEC: SettingSpec(env, doc, check)})


def _at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"must be >= {low}, got {value}"


def _domain_type(value: str) -> str | None:
    return None if value in {"", "kvm", "qemu"} else f"must be kvm, qemu or empty, got {value!r}"


def _post_load(value: str) -> str | None:
    ok = value in {"ssh", "none"} or ":" in value
    return None if ok else f"must be ssh, none or module:function, got {value!r}"


def _ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return f"must be an IP address (e.g. 127.0.0.1), got {value!r}"
    return None


def _vnc_password(pw: str) -> str | None:
    # The password itself never appears in a message: only what is wrong with it.
    if pw and (len(pw) > 8 or any(ord(ch) < 32 or ord(ch) == 127 for ch in pw)):
        return f"must be 1-8 printable characters (VNC uses only 8), got {len(pw)} characters"
    return None


def _roots(text: str) -> str | None:
    return next(filter(None, map(root_problem, parse_roots(text))), None)


def _root(text: str) -> str | None:
    return root_problem(text.strip()) if text.strip() else None


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
    database_url: str = setting(
        "mysql+pymysql://root@127.0.0.1:3306/vcl", env="VCL_DATABASE_URL",
        doc="the site's VCL database (schema `vcl.sql`, unchanged; READ COMMITTED)",
    )  # fmt: skip
    broker_url: str = setting("redis://127.0.0.1:6379/0", env="CELERY_BROKER_URL", doc="Celery broker")
    result_backend: str = setting(
        "redis://127.0.0.1:6379/1", env="CELERY_RESULT_BACKEND", doc="Celery result backend"
    )
    lock_redis_url: str = setting(
        "redis://127.0.0.1:6379/2", env="VCL_LOCK_REDIS_URL", doc="Redis of the per-computer locks"
    )
    libvirt_uri: str = setting(
        "qemu:///system", env="VCL_LIBVIRT_URI", doc="libvirt connection of the host this worker runs on"
    )
    vmhost: str = setting(
        "", env="VCL_VMHOST",
        doc="the VM host this worker serves (its short name in VCL; `vcl-worker worker --vmhost` sets it): "
        "a task for a computer on another host is refused before libvirt and re-sent to that host's "
        "queue; empty = the host named by the `vmhost.<host>` queue the task came from; also "
        "`vcl-worker reap`'s default `--vmhost`",
    )  # fmt: skip
    vnc_listen: str = setting(
        "127.0.0.1", env="VCL_VNC_LISTEN", check=_ip_address,
        doc="VNC listen address written into every domain: an IP address; anything but loopback needs "
        "`VCL_VNC_PASSWORD` (else every guest's console is open to the network)",
    )  # fmt: skip
    vnc_password: str = setting(
        "", env="VCL_VNC_PASSWORD", check=_vnc_password, secret=True,
        doc="VNC password written into every domain (at most 8 characters: VNC ignores the rest); "
        "required when `VCL_VNC_LISTEN` is not a loopback address; never logged",
    )  # fmt: skip
    allowed_roots: str = setting(
        "/var/lib/libvirt/images", env="VCL_ALLOWED_ROOTS", check=_roots,
        doc="`:`-separated roots every vmprofile path (datastore, vmpath, repository) must resolve "
        "under; anything else fails before a file is created, walked or deleted",
    )  # fmt: skip
    repository_root: str = setting(
        "", env="VCL_REPOSITORY_ROOT", check=_root,
        doc="the site's image repository (a `vmprofile.repositorypath` lies under it): one more "
        "allowed root; empty = none",
    )  # fmt: skip
    host_aliases: str = setting(
        "", env="VCL_HOST_ALIASES",
        doc="other names of this VM host in VCL (comma-separated) when its `computer.hostname` is not "
        "the OS host name: `vcl-worker reap --apply` only acts for a `--vmhost` naming this host",
    )  # fmt: skip
    lock_dir: str = setting(
        "/var/lib/vcl-worker/locks", env="VCL_LOCK_DIR", doc="file locks around master materialisation"
    )
    shutdown_timeout: int = setting(
        60, env="VCL_SHUTDOWN_TIMEOUT", doc="seconds a guest gets to shut down on ACPI before it is destroyed"
    )
    shutdown_retry_interval: int = setting(
        10, env="VCL_SHUTDOWN_RETRY_INTERVAL", doc="seconds between re-sent ACPI requests; `0`: sent once"
    )
    qemu_img_convert_timeout: int = setting(
        7200, env="VCL_QEMU_IMG_CONVERT_TIMEOUT", doc="seconds a heavy `qemu-img convert` (a copy) may take"
    )
    qemu_img_info_timeout: int = setting(
        60, env="VCL_QEMU_IMG_INFO_TIMEOUT", doc="seconds a cheap `qemu-img` call (info, create) may take"
    )
    management_node_id: int = setting(
        1, env="VCL_MANAGEMENT_NODE_ID", doc="`managementnode.id` the dispatcher serves"
    )
    load_soft_time_limit: int = setting(
        7800, env="VCL_LOAD_SOFT_TIME_LIMIT",
        doc="Celery soft time limit (s) of load/reload/maintenance: above "
        "`VCL_QEMU_IMG_CONVERT_TIMEOUT` (a load may wait for another load's master copy)",
    )  # fmt: skip
    load_time_limit: int = setting(
        8100, env="VCL_LOAD_TIME_LIMIT", doc="Celery hard time limit (s) of load/reload/maintenance"
    )
    capture_soft_time_limit: int = setting(
        15000, env="VCL_CAPTURE_SOFT_TIME_LIMIT", doc="Celery soft time limit (s) of capture (two copies)"
    )
    capture_time_limit: int = setting(
        15600, env="VCL_CAPTURE_TIME_LIMIT", doc="Celery hard time limit (s) of capture"
    )
    lock_wait: int = setting(
        300, env="VCL_LOCK_WAIT", doc="seconds a task waits for a busy computer's lock before it is retried"
    )
    lock_lease: int = setting(
        120, env="VCL_LOCK_LEASE", check=_at_least(3),
        doc="seconds the per-computer lock lives unless a heartbeat renews it (every third of this): "
        "a task killed by its hard time limit, or a lost release, holds a computer at most this long",
    )  # fmt: skip
    task_max_retries: int = setting(
        10, env="VCL_TASK_MAX_RETRIES", check=_at_least(0),
        doc="Celery retries of a transient error (database, Redis, libvirt connection, busy computer): "
        "backoff 2, 4, 8 … s with full jitter; 10 reach the cap and ride out a ~20 min database "
        "outage; exhausted → the reservation fails",
    )  # fmt: skip
    retry_backoff_max: int = setting(
        300, env="VCL_RETRY_BACKOFF_MAX", doc="cap (s) of the retry backoff: below the visibility timeout"
    )
    max_deliveries: int = setting(
        5, env="VCL_MAX_DELIVERIES", check=_at_least(1),
        doc="deliveries of one task attempt before it is failed instead of run: a reservation that "
        "kills its worker child is not redelivered forever",
    )  # fmt: skip
    sweep_grace: int = setting(
        120, env="VCL_SWEEP_GRACE", check=_at_least(1),
        doc="seconds a claimed request may wait for its task before the dispatcher's sweep re-enqueues "
        "it once (then fails it)",
    )  # fmt: skip
    domain_type: str = setting(
        "", env="VCL_DOMAIN_TYPE", check=_domain_type,
        doc="`kvm`, `qemu` (TCG) or empty (auto): `kvm` only with hardware virtualization (vmx/svm + "
        "kvm_intel/kvm_amd, not kvm_pvm), else `qemu`; the choice and its reason are logged once",
    )  # fmt: skip
    ready_timeout: int = setting(
        0, env="VCL_READY_TIMEOUT", check=_at_least(0),
        doc="seconds a loaded guest gets to answer on its connect port before the load fails; `0` = "
        "the image's `reloadtime` (minutes)",
    )  # fmt: skip
    wait_for_guest: bool = setting(
        True, env="VCL_WAIT_FOR_GUEST",
        doc="a load is done only when the guest answers on its connect port (SSH: `SSH-2.0-` banner); "
        "`0` only for tests of disk/database mechanics on blank masters, never on a site",
    )  # fmt: skip
    post_load: str = setting(
        "ssh", env="VCL_POST_LOAD", check=_post_load,
        doc="after the guest answers: `ssh` (hostname + `~/currentimage.txt` as root with "
        "`managementnode.keys`, when set), `none`, or the site's own `package.module:function`",
    )  # fmt: skip
    worker_concurrency: int = setting(
        8, env="VCL_WORKER_CONCURRENCY",
        doc="prefork children per host worker: a load mostly waits on libvirt/QEMU start-up, so more "
        "than cores pays off (section \"Benchmarks\", B2)",
    )  # fmt: skip
    boot_snapshots: bool = setting(
        True, env="VCL_BOOT_SNAPSHOTS",
        doc="save a post-boot snapshot per (computer, revision) and restore it on reloads (section "
        "\"Boot snapshots\"); `0`: every load boots cold",
    )  # fmt: skip
    log_level: str = setting(
        "INFO", env="VCL_LOG_LEVEL", doc="level of the worker's logs (`DEBUG`, `INFO`, …)"
    )

    @property
    def roots(self) -> tuple[str, ...]:
        """The allowed roots resolved (symlinks followed): VCL_ALLOWED_ROOTS plus VCL_REPOSITORY_ROOT."""
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
        return {spec.env: env_text(getattr(self, name)) for name, spec in setting_specs().items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, Any] = {  # each parsed to its field's type
            name: _parse(spec.env, env[spec.env], default=getattr(defaults, name))
            for name, spec in setting_specs().items()
            if spec.env in env
        }
        settings = replace(defaults, **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that would only fail later, naming the variable: first each setting's own
        check (in declaration order), then the rules between settings."""
        for name, spec in setting_specs().items():
            problem = spec.check(getattr(self, name)) if spec.check else None
            if problem:
                raise ValueError(f"setting {spec.env} {problem}")
        self._validate_limits()
        if not parse_roots(self.allowed_roots) and not self.repository_root.strip():
            raise ValueError(f"setting {env_name('allowed_roots')} must name at least one directory")
        if not ipaddress.ip_address(self.vnc_listen.strip()).is_loopback and not self.vnc_password:
            raise ValueError(
                f"setting {env_name('vnc_listen')}={self.vnc_listen} is not a loopback address: "
                f"set {env_name('vnc_password')} so the guests' consoles are not open to the network"
            )

    def _validate_limits(self) -> None:
        """Time limits and the retry backoff must agree with each other (issue: a load's soft limit
        below the master copy it may wait for; a backoff cap never reached)."""
        convert = env_name("qemu_img_convert_timeout")
        for kind in ("load", "capture"):
            soft = getattr(self, f"{kind}_soft_time_limit")
            hard = getattr(self, f"{kind}_time_limit")
            soft_env, hard_env = env_name(f"{kind}_soft_time_limit"), env_name(f"{kind}_time_limit")
            if not 0 < soft < hard:
                raise ValueError(f"settings {soft_env}={soft} must be > 0 and < {hard_env}={hard}")
            if soft <= self.qemu_img_convert_timeout:
                raise ValueError(
                    f"setting {soft_env}={soft} must exceed {convert}={self.qemu_img_convert_timeout}: "
                    "the task may wait for (or make) a full copy"
                )
        if not 0 < self.retry_backoff_max < self.visibility_timeout:
            # A countdown beyond the visibility timeout makes Redis hand the waiting retry to a
            # second worker.
            raise ValueError(
                f"setting {env_name('retry_backoff_max')}={self.retry_backoff_max} must be > 0 and "
                f"below the Redis visibility timeout ({self.visibility_timeout} s)"
            )


def setting_specs() -> dict[str, SettingSpec]:
    """Field name → declaration of every setting, in declaration order."""
    return {f.name: f.metadata[_SPEC] for f in fields(Settings)}


def env_name(name: str) -> str:
    """The environment variable of the setting (field) ``name``."""
    return setting_specs()[name].env


def _parse(variable: str, raw: str, *, default: object) -> object:
    """``raw`` as the type of ``default``; blank means the default, except for text (kept as given)."""
    if isinstance(default, str):
        return raw
    if raw.strip() == "":
        return default
    if isinstance(default, bool):
        value = raw.strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"setting {variable} must be a boolean (1/0, yes/no), got {raw!r}")
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {variable} must be an integer, got {raw!r}") from exc


def env_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings.from_env()


__all__ = [
    "SettingSpec",
    "Settings",
    "env_name",
    "env_text",
    "get_settings",
    "redact_url",
    "setting",
    "setting_specs",
]
