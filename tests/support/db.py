"""Throw-away MariaDB databases loaded from the real vcl.sql (schema + seeds), for tests/benchmarks."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPO.parent / "shared" / "vcl" / "vcl.sql"
MARIADB_HOST = os.environ.get("VCL_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("VCL_TEST_MARIADB_PORT", "3306"))


def schema_path() -> Path:
    return Path(os.environ.get("VCL_SCHEMA_SQL", str(DEFAULT_SCHEMA)))


def _mariadb(*args: str, stdin_path: Path | None = None, database: str | None = None) -> None:
    cmd = ["mariadb", "-uroot", f"-h{MARIADB_HOST}", f"-P{MARIADB_PORT}", *args]
    if database:
        cmd.append(database)
    if stdin_path is not None:
        with stdin_path.open("rb") as fh:
            proc = subprocess.run(cmd, stdin=fh, capture_output=True, timeout=120, check=False)
    else:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")


def create_test_database(prefix: str = "vcltest") -> str:
    """Create a uniquely named database, load vcl.sql into it, return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _mariadb("-e", f"CREATE DATABASE `{name}`")
    try:
        _mariadb(stdin_path=schema_path(), database=name)
    except Exception:
        drop_test_database(f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}")
        raise
    return f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"


def drop_test_database(url: str) -> None:
    name = make_url(url).database
    if not name:
        raise ValueError(f"no database in {url!r}")
    _mariadb("-e", f"DROP DATABASE IF EXISTS `{name}`")


__all__ = ["create_test_database", "drop_test_database", "schema_path"]
