"""Throw-away MariaDB databases loaded from the real ``vcl.sql`` (schema and seed rows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from worker.devkit.commands import REPO_ROOT

DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "vcl" / "vcl.sql"
MARIADB_HOST = os.environ.get("VCL_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("VCL_TEST_MARIADB_PORT", "3306"))


def schema_path() -> Path:
    """``$VCL_SCHEMA_SQL``, else the VCL checkout next to this repository."""
    return Path(os.environ.get("VCL_SCHEMA_SQL", str(DEFAULT_SCHEMA)))


def mariadb(
    *args: str, host: str = MARIADB_HOST, port: int = MARIADB_PORT, stdin_path: Path | None = None
) -> None:
    """The ``mariadb`` client as root (no password); raises with its stderr on failure."""
    cmd = ["mariadb", "-uroot", f"-h{host}", f"-P{port}", *args]
    if stdin_path is not None:
        with stdin_path.open("rb") as fh:
            proc = subprocess.run(cmd, stdin=fh, capture_output=True, timeout=300, check=False)
    else:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")


def mariadb_available(host: str = MARIADB_HOST, port: int = MARIADB_PORT) -> bool:
    if shutil.which("mariadb") is None:
        return False
    try:
        mariadb("-e", "SELECT 1", host=host, port=port)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def database_url(name: str, host: str = MARIADB_HOST, port: int = MARIADB_PORT) -> str:
    return f"mysql+pymysql://root@{host}:{port}/{name}"


def create_test_database(
    prefix: str = "vcltest", *, host: str = MARIADB_HOST, port: int = MARIADB_PORT
) -> str:
    """Create a uniquely named database, load vcl.sql into it, return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    mariadb("-e", f"CREATE DATABASE `{name}`", host=host, port=port)
    url = database_url(name, host, port)
    try:
        mariadb(name, host=host, port=port, stdin_path=schema_path())
    except Exception:
        drop_test_database(url)
        raise
    return url


def drop_test_database(url: str) -> None:
    """Drop the database of ``url`` on the server ``url`` names."""
    parsed = make_url(url)
    if not parsed.database:
        raise ValueError(f"no database in {url!r}")
    mariadb(
        "-e",
        f"DROP DATABASE IF EXISTS `{parsed.database}`",
        host=parsed.host or MARIADB_HOST,
        port=parsed.port or MARIADB_PORT,
    )
