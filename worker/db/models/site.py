"""Site-wide rows: states, affiliations, users, management nodes, resources, variables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import ZERO_DATE_SQLITE, Base, VclDateTime, int_pk


class State(Base):
    __tablename__ = "state"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(20), nullable=False, unique=True, server_default="")


class Affiliation(Base):
    __tablename__ = "affiliation"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    dataUpdateText: Mapped[str] = mapped_column(Text, nullable=False)


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = int_pk()
    unityid: Mapped[str] = mapped_column(String(80), nullable=False, server_default="")
    affiliationid: Mapped[int] = mapped_column(
        Integer, ForeignKey("affiliation.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    firstname: Mapped[str] = mapped_column(String(20), nullable=False, server_default="")
    lastname: Mapped[str] = mapped_column(String(25), nullable=False, server_default="")
    email: Mapped[str] = mapped_column(String(80), nullable=False)
    adminlevelid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    lastupdated: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )


class ManagementNode(Base):
    __tablename__ = "managementnode"
    id: Mapped[int] = int_pk()
    IPaddress: Mapped[str] = mapped_column(String(15), nullable=False, server_default="", index=True)
    hostname: Mapped[str] = mapped_column(String(50), nullable=False, unique=True, server_default="")
    ownerid: Mapped[int] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    stateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("state.id", onupdate="CASCADE"), nullable=False, server_default="0"
    )
    lastcheckin: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    checkininterval: Mapped[int] = mapped_column(Integer, nullable=False, server_default="12")
    installpath: Mapped[str] = mapped_column(String(100), nullable=False, server_default="/install")
    imagelibenable: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    keys: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    sshport: Mapped[int] = mapped_column(Integer, nullable=False, server_default="22")
    publicIPconfiguration: Mapped[str] = mapped_column(
        Enum("dynamicDHCP", "manualDHCP", "static", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="dynamicDHCP",
    )
    availablenetworks: Mapped[str] = mapped_column(Text, nullable=False)


class ResourceType(Base):
    __tablename__ = "resourcetype"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(50), nullable=False, unique=True, server_default="")


class Resource(Base):
    __tablename__ = "resource"
    id: Mapped[int] = int_pk()
    resourcetypeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("resourcetype.id", onupdate="CASCADE"), nullable=False, server_default="0"
    )
    subid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class Variable(Base):
    __tablename__ = "variable"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    serialization: Mapped[str] = mapped_column(
        Enum("none", "yaml", "phpserialize", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="none",
    )
    value: Mapped[str] = mapped_column(Text, nullable=False)
    setby: Mapped[str | None] = mapped_column(String(128), nullable=True)
    timestamp: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=False)


__all__ = ["Affiliation", "ManagementNode", "Resource", "ResourceType", "State", "User", "Variable"]
