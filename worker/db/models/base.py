"""Column types and the declarative base shared by every model module."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: vcl.sql's zero date cannot be parsed by SQLite; its server default there is the epoch.
ZERO_DATE_SQLITE = text("'1970-01-01 00:00:00'")


class VclDateTime(TypeDecorator[datetime]):
    """``DATETIME`` that reads MySQL zero dates (``0000-00-00 00:00:00``, returned as ``str``
    by PyMySQL) as ``None``."""

    impl = DateTime
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        if isinstance(value, str):
            if value.startswith("0000-00-00"):
                return None
            return datetime.fromisoformat(value)
        return None


class Base(DeclarativeBase):
    pass


def int_pk() -> Mapped[int]:
    return mapped_column(Integer, primary_key=True, autoincrement=True)


__all__ = ["ZERO_DATE_SQLITE", "Base", "VclDateTime", "int_pk"]
