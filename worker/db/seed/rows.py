"""Row helpers shared by the seeding modules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db.errors import VclDataError


def pk(s: Session, stmt: Any) -> int:
    res = s.execute(stmt)
    key = res.inserted_primary_key  # type: ignore[attr-defined]
    return int(key[0])


def id_by_name(s: Session, model: Any, name: str, column: str = "name") -> int:
    value = s.execute(select(model.id).where(getattr(model, column) == name)).scalar_one_or_none()
    if value is None:
        raise VclDataError(f"{model.__tablename__} {name!r} does not exist")
    return int(value)


__all__ = ["id_by_name", "pk"]
