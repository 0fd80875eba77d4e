"""Raw-SQL helpers for asserting on rows (independent of the store's own queries)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from worker.db.seed import SeededSite, create_request

SNAPSHOT_TABLES = ("request", "reservation", "computer", "computerloadlog", "image", "imagerevision", "log")


def one(sf: sessionmaker[Session], sql: str, **params: Any) -> dict[str, Any]:
    with sf() as s:
        return dict(s.execute(text(sql), params).mappings().one())


def rows(sf: sessionmaker[Session], sql: str, **params: Any) -> list[dict[str, Any]]:
    with sf() as s:
        return [dict(r) for r in s.execute(text(sql), params).mappings().all()]


def request_row(sf: sessionmaker[Session], request_id: int) -> dict[str, Any]:
    return one(
        sf,
        "SELECT r.*, s.name AS state, ls.name AS laststate, u.unityid AS user FROM request r "
        "JOIN state s ON s.id = r.stateid JOIN state ls ON ls.id = r.laststateid "
        "JOIN user u ON u.id = r.userid WHERE r.id = :id",
        id=request_id,
    )


def computer_row(sf: sessionmaker[Session], computer_id: int) -> dict[str, Any]:
    return one(
        sf,
        "SELECT c.*, s.name AS state FROM computer c JOIN state s ON s.id = c.stateid WHERE c.id = :id",
        id=computer_id,
    )


def loadlog_names(sf: sessionmaker[Session], reservation_id: int) -> list[str]:
    return [
        r["loadstatename"]
        for r in rows(
            sf,
            "SELECT cls.loadstatename FROM computerloadlog l JOIN computerloadstate cls "
            "ON cls.id = l.loadstateid WHERE l.reservationid = :id ORDER BY l.id",
            id=reservation_id,
        )
    ]


def snapshot(sf: sessionmaker[Session]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the store writes (to prove a failed call changed nothing)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with sf() as s:
        for table in SNAPSHOT_TABLES:
            out[table] = [tuple(r) for r in s.execute(text(f"SELECT * FROM `{table}` ORDER BY 1")).all()]
    return out


def execute(sf: sessionmaker[Session], sql: str, **params: Any) -> None:
    with sf.begin() as s:
        s.execute(text(sql), params)


def new_request(
    sf: sessionmaker[Session], site: SeededSite, computer: int = 0, state: str = "new"
) -> tuple[int, int]:
    """(request id, reservation id) of a request the web would insert for computer ``computer``."""
    return create_request(
        sf,
        computer_id=site.computer_ids[computer],
        image_id=site.image_id,
        imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
        state=state,
    )
