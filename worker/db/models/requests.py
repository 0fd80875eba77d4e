"""Requests and what hangs off them: reservations, server requests, logs, computerloadlog."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import ZERO_DATE_SQLITE, Base, VclDateTime, int_pk


class Request(Base):
    __tablename__ = "request"
    id: Mapped[int] = int_pk()
    stateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("state.id", onupdate="CASCADE"), nullable=False, server_default="0", index=True
    )
    userid: Mapped[int] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=False, server_default="0", index=True
    )
    laststateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("state.id", onupdate="CASCADE"), nullable=False, server_default="0", index=True
    )
    logid: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("log.id", onupdate="CASCADE"), nullable=True, index=True
    )
    forimaging: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    test: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    preload: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    start: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE, index=True
    )
    end: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE, index=True
    )
    daterequested: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    datemodified: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    checkuser: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")


class Reservation(Base):
    __tablename__ = "reservation"
    id: Mapped[int] = int_pk()
    requestid: Mapped[int] = mapped_column(
        Integer, ForeignKey("request.id", ondelete="CASCADE"), nullable=False, server_default="0", index=True
    )
    computerid: Mapped[int] = mapped_column(
        Integer, ForeignKey("computer.id"), nullable=False, server_default="0", index=True
    )
    imageid: Mapped[int] = mapped_column(
        Integer, ForeignKey("image.id"), nullable=False, server_default="0", index=True
    )
    imagerevisionid: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("imagerevision.id", onupdate="CASCADE"),
        nullable=False,
        server_default="0",
        index=True,
    )
    managementnodeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("managementnode.id"), nullable=False, server_default="1", index=True
    )
    remoteIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    lastcheck: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=True, server_default=ZERO_DATE_SQLITE
    )
    pw: Mapped[str | None] = mapped_column(String(40), nullable=True)
    connectIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    connectport: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ServerRequest(Base):
    __tablename__ = "serverrequest"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    serverprofileid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    requestid: Mapped[int] = mapped_column(
        Integer, ForeignKey("request.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    fixedIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    fixedMAC: Mapped[str | None] = mapped_column(String(17), nullable=True)
    monitored: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class Log(Base):
    __tablename__ = "log"
    id: Mapped[int] = int_pk()
    userid: Mapped[int] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=False, server_default="0"
    )
    nowfuture: Mapped[str] = mapped_column(
        Enum("now", "future", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="now",
    )
    start: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    loaded: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    initialend: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    finalend: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    wasavailable: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    ending: Mapped[str] = mapped_column(
        Enum(
            "deleted",
            "released",
            "failed",
            "failedtest",
            "noack",
            "nologin",
            "timeout",
            "EOR",
            "none",
            native_enum=True,
            create_constraint=False,
        ),
        nullable=False,
        server_default="none",
    )
    requestid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    computerid: Mapped[int | None] = mapped_column(Integer, ForeignKey("computer.id"), nullable=True)
    remoteIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    imageid: Mapped[int] = mapped_column(Integer, ForeignKey("image.id"), nullable=False, server_default="0")
    size: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1450")


class Changelog(Base):
    __tablename__ = "changelog"
    id: Mapped[int] = int_pk()
    logid: Mapped[int] = mapped_column(
        Integer, ForeignKey("log.id", onupdate="CASCADE"), nullable=False, server_default="0", index=True
    )
    userid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reservationid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    end: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    computerid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remoteIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    wasavailable: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timestamp: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    other: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ComputerLoadState(Base):
    __tablename__ = "computerloadstate"
    id: Mapped[int] = int_pk()
    loadstatename: Mapped[str] = mapped_column(String(24), nullable=False, unique=True)
    prettyname: Mapped[str | None] = mapped_column(String(50), nullable=True)
    est: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ComputerLoadLog(Base):
    __tablename__ = "computerloadlog"
    id: Mapped[int] = int_pk()
    reservationid: Mapped[int] = mapped_column(
        Integer, ForeignKey("reservation.id", ondelete="CASCADE"), nullable=False, index=True
    )
    computerid: Mapped[int] = mapped_column(Integer, ForeignKey("computer.id"), nullable=False, index=True)
    loadstateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("computerloadstate.id", onupdate="CASCADE"), nullable=False, index=True
    )
    timestamp: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    additionalinfo: Mapped[str | None] = mapped_column(Text, nullable=True)


class VcldSemaphore(Base):
    __tablename__ = "vcldsemaphore"
    identifier: Mapped[str] = mapped_column(String(256), primary_key=True)
    reservationid: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("reservation.id", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
        index=True,
    )
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    expires: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=False)


__all__ = [
    "Changelog",
    "ComputerLoadLog",
    "ComputerLoadState",
    "Log",
    "Request",
    "Reservation",
    "ServerRequest",
    "VcldSemaphore",
]
