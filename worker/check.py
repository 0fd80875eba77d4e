"""``vcl-worker check``: is this machine set up to serve a VCL site? One line per problem.

A check is a small function returning the problems it found (lines naming the setting or the VCL row
to fix) and, through :class:`Report`, what it found fine. This module holds the checks a management
node needs (settings, the database with VCL's schema, the broker, the result backend, the lock Redis,
the management node's row and ``managementnode.keys``) and the VM host's rows: it never loads
libvirt, so ``vcl-worker check --management-node`` runs where libvirt-python is not installed. The VM
host's own checks (libvirt, domain type, datastore, switches, free space) are in
:mod:`worker.check_host`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paramiko
import redis
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from worker.config import Settings, env_name, redact_url
from worker.db import models as m
from worker.db.engine import make_engine
from worker.db.reservation_row import short_name

CONNECT_TIMEOUT = 5  # seconds a service gets to answer before it counts as unreachable
_REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass
class Report:
    """What a check run found: ``problems`` (each a line naming what to fix) and ``passed`` notes."""

    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def add(self, problems: list[str], passed: str) -> bool:
        """Record ``problems``, or ``passed`` when there are none; True when there were none."""
        self.problems.extend(problems)
        if not problems:
            self.passed.append(passed)
        return not problems

    def lines(self) -> list[str]:
        return [f"ok:      {p}" for p in self.passed] + [f"PROBLEM: {p}" for p in self.problems]


@dataclass(frozen=True)
class HostProfile:
    """A VM host's ``vmhost`` row and the columns of its ``vmprofile`` the worker uses."""

    vmhost_id: int
    hostname: str
    profile: str
    datastorepath: str
    vmpath: str | None
    repositorypath: str | None
    virtualswitch0: str | None
    virtualswitch1: str | None

    def row(self, column: str) -> str:
        """How a problem names a column of this host's profile."""
        return f"vmprofile {self.profile!r} {column} (of vmhost {self.hostname})"


def read_settings(env: Mapping[str, str] | None = None) -> tuple[Settings | None, list[str]]:
    """The settings, or the validation problem naming the variable."""
    try:
        return Settings.from_env(env), []
    except ValueError as exc:
        return None, [str(exc)]


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0]


def database_problems(settings: Settings) -> tuple[Engine | None, list[str]]:
    """The database answers and has VCL's schema (every table the worker maps); its engine when it does."""
    url = settings.database_url
    where = f"{env_name('database_url')}={redact_url(url)}"
    try:
        mysql = not url.startswith("sqlite")
        engine = make_engine(url, **({"connect_args": {"connect_timeout": CONNECT_TIMEOUT}} if mysql else {}))
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        return None, [f"{where}: cannot connect: {_first_line(exc)}"]
    missing = sorted(set(m.Base.metadata.tables) - tables)
    if missing:
        shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
        return None, [f"{where}: not the VCL schema (vcl.sql): {len(missing)} tables missing: {shown}"]
    return engine, []


def redis_problems(name: str, url: str) -> list[str]:
    """The Redis of setting ``name`` (a field of Settings) answers."""
    where = f"{env_name(name)}={redact_url(url)}"
    scheme = urlsplit(url).scheme
    try:
        if scheme in _REDIS_SCHEMES:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
            )
            try:
                client.ping()
            finally:
                client.close()
        elif name != "lock_redis_url":
            return []  # a broker or result backend that is not Redis: not checked here
        else:
            return [f"{where}: must be a Redis URL (redis://, rediss:// or unix://)"]
    except (redis.RedisError, OSError, ValueError) as exc:
        return [f"{where}: unreachable: {_first_line(exc)}"]
    return []


def service_checks(report: Report, settings: Settings) -> Engine | None:
    """Database, broker, result backend, lock Redis: what every process of the site needs."""
    engine, problems = database_problems(settings)
    report.add(problems, f"database {redact_url(settings.database_url)} has the VCL schema")
    for name, what in (
        ("broker_url", "broker"), ("result_backend", "result backend"), ("lock_redis_url", "lock Redis"),
    ):  # fmt: skip
        url = getattr(settings, name)
        report.add(redis_problems(name, url), f"{what} {redact_url(url)} answers")
    return engine


def management_node_keys(engine: Engine, mn_id: int) -> tuple[str, tuple[str, ...]] | None:
    """(hostname, key files) of ``managementnode`` ``mn_id``; None when there is no such row."""
    with engine.connect() as conn:
        row = conn.execute(
            select(m.ManagementNode.hostname, m.ManagementNode.keys).where(m.ManagementNode.id == mn_id)
        ).first()
    if row is None:
        return None
    return str(row[0]), tuple(k.strip() for k in (row[1] or "").split(",") if k.strip())


def key_file_problems(row: str, paths: tuple[str, ...]) -> list[str]:
    """Every key file is a private key (no passphrase) this process can read, as post-load needs."""
    problems = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            paramiko.PKey.from_path(path)
        except FileNotFoundError:
            problems.append(f"{row}: {path} does not exist")
        except OSError as exc:
            problems.append(f"{row}: {path} cannot be read: {exc.strerror or exc}")
        except (paramiko.SSHException, ValueError) as exc:
            problems.append(f"{row}: {path} is not a private key without passphrase: {exc}")
    return problems


def keys_check(report: Report, engine: Engine, settings: Settings) -> None:
    """The management node's row exists and its ``keys`` are readable private keys."""
    mn_id = settings.management_node_id
    found = management_node_keys(engine, mn_id)
    if found is None:
        report.problems.append(
            f"managementnode.id={mn_id} ({env_name('management_node_id')}): no such row in the VCL database"
        )
        return
    hostname, keys = found
    row = f"managementnode.keys of management node {hostname} (id {mn_id})"
    passed = f"{row}: {', '.join(keys)} readable" if keys else f"{row} is empty: post-load is skipped"
    report.add(key_file_problems(row, keys), passed)


def host_profile(engine: Engine, vmhost: str) -> HostProfile | None:
    """The ``vmhost`` whose computer's hostname (or its short name) is ``vmhost``, with its profile."""
    vp, c = m.VMProfileRow, m.Computer
    query = (
        select(m.VMHost.id, c.hostname, vp.profilename, vp.datastorepath, vp.vmpath, vp.repositorypath)
        .add_columns(vp.virtualswitch0, vp.virtualswitch1)
        .join(c, c.id == m.VMHost.computerid)
        .join(vp, vp.id == m.VMHost.vmprofileid)
        .where(c.deleted == 0)
    )
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if vmhost in (r[1], short_name(r[1]))]
    if not rows:
        return None
    r = rows[0]
    return HostProfile(int(r[0]), str(r[1]), *r[2:])


def management_node_report(env: Mapping[str, str] | None = None) -> Report:
    """Everything a management node (``vcl-worker dispatch``) needs; never loads libvirt."""
    report = Report()
    settings, problems = read_settings(env)
    if not report.add(problems, "settings are valid") or settings is None:
        return report
    engine = service_checks(report, settings)
    if engine is not None:
        try:
            keys_check(report, engine, settings)
        finally:
            engine.dispose()
    return report


def lock_dir_problems(settings: Settings) -> list[str]:
    """``VCL_LOCK_DIR`` exists and is writable, or can be created by this process."""
    path = settings.lock_dir
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        what = (
            "is not a writable directory" if probe == path else f"cannot be created ({probe} is not writable)"
        )
        return [f"{env_name('lock_dir')}={path} {what}"]
    return []


def print_report(report: Report, title: str) -> int:
    """Print the report (passed checks, then one line per problem); the exit code: 1 on any problem."""
    for line in report.lines():
        print(line, flush=True)
    n = len(report.problems)
    print(f"{title}: {'all checks passed' if n == 0 else f'{n} problem(s)'}", flush=True)
    return 1 if n else 0


__all__ = [
    "HostProfile",
    "Report",
    "database_problems",
    "host_profile",
    "keys_check",
    "lock_dir_problems",
    "management_node_report",
    "print_report",
    "read_settings",
    "redis_problems",
    "service_checks",
]
