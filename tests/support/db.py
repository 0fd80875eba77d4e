"""Throw-away MariaDB databases loaded from the real vcl.sql (schema + seeds), for tests/benchmarks."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from worker.db import models as m

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


def seed_poll_requests(sf: Any, site: Any, finished: int = 10_000, due: int = 100) -> None:
    """The dispatcher-poll load: ``finished`` reservations vcld has nothing to do with yet (future
    reservations and reloads, complete/failed requests whose end has not passed) plus ``due`` ``new``
    requests starting now, all on ``site``'s management node (test_due_requests and bench B5)."""
    with sf() as s:
        now = s.execute(text("SELECT NOW()")).scalar_one()
    cid = site.computer_ids[0]
    with sf.begin() as s:
        ids = {n: i for n, i in s.execute(text("SELECT name, id FROM state")).all()}
        kinds: list[tuple[str, str, datetime, datetime]] = []
        for i in range(finished):
            k = i % 4
            if k == 0:
                kinds.append(
                    (
                        "new",
                        "new",
                        now + timedelta(days=1 + i % 30),
                        now + timedelta(days=1 + i % 30, hours=2),
                    )
                )
            elif k == 1:
                kinds.append(("complete", "inuse", now - timedelta(hours=1), now + timedelta(hours=3)))
            elif k == 2:
                kinds.append(("failed", "reserved", now - timedelta(hours=1), now + timedelta(hours=3)))
            else:
                kinds.append(
                    ("reload", "reload", now + timedelta(hours=3 + i % 50), now + timedelta(hours=4 + i % 50))
                )
        for i in range(due):
            kinds.append(("new", "new", now - timedelta(minutes=i % 5), now + timedelta(hours=1)))
        reqs = [
            {
                "stateid": ids[st],
                "laststateid": ids[lst],
                "userid": 1,
                "start": a,
                "end": b,
                "daterequested": now,
            }
            for st, lst, a, b in kinds
        ]
        first = s.execute(text("SELECT COALESCE(MAX(id), 0) FROM request")).scalar_one()
        s.execute(insert(m.Request), reqs)
        s.execute(
            insert(m.Reservation),
            [
                {"requestid": first + 1 + j, "computerid": cid, "imageid": site.image_id,
                 "imagerevisionid": site.imagerevision_id, "managementnodeid": site.management_node_id}
                for j in range(len(reqs))
            ],
        )  # fmt: skip
    with sf() as s:
        s.execute(text("ANALYZE TABLE reservation, request"))
