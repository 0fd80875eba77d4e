"""VCL's connect methods: which ports a user connects to on an image (SSH 22, RDP 3389).

``connectmethodmap`` has no primary key in vcl.sql, so it is a Core :class:`Table`, not an ORM class.
"""

from __future__ import annotations

from sqlalchemy import Column, Enum, Integer, Table
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import Base, int_pk

connectmethodmap = Table(
    "connectmethodmap",
    Base.metadata,
    Column("connectmethodid", Integer, nullable=False),
    Column("OStypeid", Integer, nullable=True),
    Column("OSid", Integer, nullable=True),
    Column("imagerevisionid", Integer, nullable=True),
    Column("disabled", Integer, nullable=False, server_default="0"),
    Column("autoprovisioned", Integer, nullable=True),
)


class ConnectMethodPort(Base):
    __tablename__ = "connectmethodport"
    id: Mapped[int] = int_pk()
    connectmethodid: Mapped[int] = mapped_column(Integer, nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    protocol: Mapped[str] = mapped_column(Enum("TCP", "UDP", name="cmp_protocol"), nullable=False)
