"""Engine and session factory for the VCL database (MariaDB/MySQL in production, SQLite for the demo)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool


def make_engine(url: str, **kw: Any) -> Engine:
    """Create the engine for ``url`` (``Settings.database_url``).

    MySQL/MariaDB: ``READ COMMITTED`` (like vcld's autocommit statements, every transaction sees
    rows committed by the web front end and other workers), ``pool_pre_ping`` and a recycle below
    MySQL's ``wait_timeout``. SQLite: foreign keys on, usable from several threads; an in-memory
    database uses one shared connection (:class:`StaticPool`). ``kw`` overrides any default.
    """
    u = make_url(url)
    opts: dict[str, Any]
    if u.get_backend_name() == "sqlite":
        opts = {"connect_args": {"check_same_thread": False}}
        if u.database in (None, "", ":memory:"):
            opts["poolclass"] = StaticPool
    else:
        opts = {"isolation_level": "READ COMMITTED", "pool_pre_ping": True, "pool_recycle": 3600}
    opts.update(kw)
    engine = create_engine(u, **opts)
    if u.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory; the store opens one ``with sf.begin()`` transaction per operation."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def db_now(session: Session) -> datetime:
    """The database's ``NOW()`` (whole seconds, naive, session time zone) as vcld/the web use it.

    SQLite's ``CURRENT_TIMESTAMP`` is UTC while the rest of the demo uses local naive times, so on
    SQLite this is the local clock of this process.
    """
    if is_sqlite(session):
        return datetime.now().replace(microsecond=0)
    value = session.execute(select(func.now())).scalar_one()
    if not isinstance(value, datetime):  # pragma: no cover - driver contract
        raise TypeError(f"NOW() returned {value!r}")
    return value.replace(microsecond=0)


__all__ = ["db_now", "is_sqlite", "make_engine", "make_session_factory"]
