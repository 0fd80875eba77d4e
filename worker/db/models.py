"""Typed SQLAlchemy models of the subset of the Apache VCL schema (``vcl.sql``) the worker uses.

Table and column names are exactly those of ``vcl.sql`` (case-sensitive: ``OS``, ``OStype``).
On MariaDB/MySQL the schema always comes from ``vcl.sql`` itself; these models never create it
there. ``Base.metadata.create_all`` is only used for the embedded SQLite demo, so:

* integer columns are the generic :class:`~sqlalchemy.Integer` (SQLite needs ``INTEGER PRIMARY KEY``
  for auto-increment; MySQL's ``tinyint/smallint/mediumint unsigned`` are read and written as ints);
* ``server_default`` values only matter on SQLite. vcl.sql's zero dates (``'0000-00-00 00:00:00'``)
  cannot be parsed there, so the SQLite default is ``1970-01-01 00:00:00`` and
  :class:`VclDateTime` reads MySQL zero dates as ``None``;
* foreign keys that form cycles in vcl.sql (``computer.vmhostid`` <-> ``vmhost.computerid``,
  ``image.basedoffrevisionid`` <-> ``imagerevision.imageid``) are declared on one side only.

Only the columns the worker reads or writes (plus every NOT NULL column without a default) are
mapped; the reflection test in ``tests/db`` checks each mapped column against the real schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

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


def _int_pk() -> Mapped[int]:
    return mapped_column(Integer, primary_key=True, autoincrement=True)


class State(Base):
    __tablename__ = "state"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(20), nullable=False, unique=True, server_default="")


class Affiliation(Base):
    __tablename__ = "affiliation"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    dataUpdateText: Mapped[str] = mapped_column(Text, nullable=False)


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = _int_pk()
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


class Platform(Base):
    __tablename__ = "platform"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(20), nullable=False, unique=True, server_default="")


class Module(Base):
    __tablename__ = "module"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)
    prettyname: Mapped[str] = mapped_column(String(70), nullable=False)
    description: Mapped[str] = mapped_column(String(255), nullable=False)
    perlpackage: Mapped[str] = mapped_column(String(150), nullable=False)


class Provisioning(Base):
    __tablename__ = "provisioning"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)
    prettyname: Mapped[str] = mapped_column(String(70), nullable=False)
    moduleid: Mapped[int] = mapped_column(
        Integer, ForeignKey("module.id", onupdate="CASCADE"), nullable=False, index=True
    )


class ImageType(Base):
    __tablename__ = "imagetype"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)


class OSType(Base):
    __tablename__ = "OStype"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)


class OSInstallType(Base):
    __tablename__ = "OSinstalltype"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)


class OS(Base):
    __tablename__ = "OS"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(20), nullable=False, unique=True)
    prettyname: Mapped[str] = mapped_column(String(64), nullable=False, unique=True, server_default="")
    type: Mapped[str] = mapped_column(
        String(30), ForeignKey("OStype.name", onupdate="CASCADE"), nullable=False, index=True
    )
    installtype: Mapped[str] = mapped_column(
        String(30),
        ForeignKey("OSinstalltype.name", onupdate="CASCADE"),
        nullable=False,
        server_default="image",
    )
    minram: Mapped[int] = mapped_column(Integer, nullable=False, server_default="512")
    sourcepath: Mapped[str | None] = mapped_column(String(30), nullable=True)
    moduleid: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("module.id", onupdate="CASCADE"), nullable=True
    )


class Image(Base):
    __tablename__ = "image"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(70), nullable=False, unique=True, server_default="")
    prettyname: Mapped[str] = mapped_column(String(80), nullable=False, unique=True, server_default="")
    ownerid: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=True, server_default="1"
    )
    imagetypeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("imagetype.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    platformid: Mapped[int] = mapped_column(
        Integer, ForeignKey("platform.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    OSid: Mapped[int] = mapped_column(
        Integer, ForeignKey("OS.id", onupdate="CASCADE"), nullable=False, server_default="0"
    )
    imagemetaid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    minram: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    minprocnumber: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    minprocspeed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    minnetwork: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    reloadtime: Mapped[int] = mapped_column(Integer, nullable=False, server_default="10")
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    test: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    lastupdate: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    forcheckout: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    maxinitialtime: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    project: Mapped[str] = mapped_column(
        Enum("vcl", "hpc", "vclhpc", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="vcl",
    )
    size: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    architecture: Mapped[str] = mapped_column(
        Enum("x86", "x86_64", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="x86",
    )
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    basedoffrevisionid: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ImageRevision(Base):
    __tablename__ = "imagerevision"
    id: Mapped[int] = _int_pk()
    imageid: Mapped[int] = mapped_column(Integer, ForeignKey("image.id"), nullable=False)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    userid: Mapped[int] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=False, index=True
    )
    datecreated: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=False)
    deleted: Mapped[int] = mapped_column(Integer, nullable=False)
    datedeleted: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    production: Mapped[int] = mapped_column(Integer, nullable=False)
    comments: Mapped[str | None] = mapped_column(Text, nullable=True)
    imagename: Mapped[str] = mapped_column(String(75), nullable=False)
    autocaptured: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class ManagementNode(Base):
    __tablename__ = "managementnode"
    id: Mapped[int] = _int_pk()
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


class VMProfileRow(Base):
    __tablename__ = "vmprofile"
    id: Mapped[int] = _int_pk()
    profilename: Mapped[str] = mapped_column(String(56), nullable=False, unique=True)
    imageid: Mapped[int] = mapped_column(Integer, ForeignKey("image.id"), nullable=False, index=True)
    resourcepath: Mapped[str | None] = mapped_column(String(256), nullable=True)
    folderpath: Mapped[str | None] = mapped_column(String(256), nullable=True)
    repositorypath: Mapped[str | None] = mapped_column(String(128), nullable=True)
    repositoryimagetypeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("imagetype.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    datastorepath: Mapped[str] = mapped_column(String(128), nullable=False)
    datastoreimagetypeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("imagetype.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    vmpath: Mapped[str | None] = mapped_column(String(128), nullable=True)
    virtualswitch0: Mapped[str] = mapped_column(String(80), nullable=False, server_default="VMnet0")
    virtualswitch1: Mapped[str] = mapped_column(String(80), nullable=False, server_default="VMnet2")
    virtualswitch2: Mapped[str | None] = mapped_column(String(80), nullable=True)
    virtualswitch3: Mapped[str | None] = mapped_column(String(80), nullable=True)
    vmdisk: Mapped[str] = mapped_column(
        Enum("dedicated", "shared", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="dedicated",
    )
    username: Mapped[str | None] = mapped_column(String(80), nullable=True)
    password: Mapped[str | None] = mapped_column(String(256), nullable=True)
    eth0generated: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    eth1generated: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class VMHost(Base):
    __tablename__ = "vmhost"
    id: Mapped[int] = _int_pk()
    # FK to computer.id exists in vcl.sql; not declared here (cycle with computer.vmhostid).
    computerid: Mapped[int] = mapped_column(Integer, nullable=False)
    vmprofileid: Mapped[int] = mapped_column(
        Integer, ForeignKey("vmprofile.id", onupdate="CASCADE"), nullable=False, index=True
    )


class Computer(Base):
    __tablename__ = "computer"
    id: Mapped[int] = _int_pk()
    stateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("state.id", onupdate="CASCADE"), nullable=False, server_default="10", index=True
    )
    ownerid: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("user.id", onupdate="CASCADE"), nullable=True, server_default="1"
    )
    platformid: Mapped[int] = mapped_column(
        Integer, ForeignKey("platform.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    scheduleid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vmhostid: Mapped[int | None] = mapped_column(
        Integer,
        ForeignKey("vmhost.id", ondelete="SET NULL", onupdate="CASCADE"),
        nullable=True,
        index=True,
    )
    currentimageid: Mapped[int] = mapped_column(
        Integer, ForeignKey("image.id"), nullable=False, server_default="1"
    )
    nextimageid: Mapped[int] = mapped_column(
        Integer, ForeignKey("image.id"), nullable=False, server_default="1"
    )
    imagerevisionid: Mapped[int] = mapped_column(
        Integer, ForeignKey("imagerevision.id", onupdate="CASCADE"), nullable=False, server_default="1"
    )
    RAM: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    procnumber: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    procspeed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    network: Mapped[int] = mapped_column(Integer, nullable=False, server_default="100")
    hostname: Mapped[str] = mapped_column(String(36), nullable=False, server_default="")
    IPaddress: Mapped[str] = mapped_column(String(15), nullable=False, server_default="")
    privateIPaddress: Mapped[str | None] = mapped_column(String(15), nullable=True)
    eth0macaddress: Mapped[str | None] = mapped_column(String(17), nullable=True)
    eth1macaddress: Mapped[str | None] = mapped_column(String(17), nullable=True)
    type: Mapped[str] = mapped_column(
        Enum("blade", "lab", "virtualmachine", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="blade",
    )
    provisioningid: Mapped[int] = mapped_column(
        Integer, ForeignKey("provisioning.id", onupdate="CASCADE"), nullable=False, index=True
    )
    drivetype: Mapped[str] = mapped_column(String(4), nullable=False, server_default="hda")
    deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    datedeleted: Mapped[datetime | None] = mapped_column(
        VclDateTime, nullable=False, server_default=ZERO_DATE_SQLITE
    )
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    lastcheck: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    vmtypeid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    predictivemoduleid: Mapped[int] = mapped_column(
        Integer, ForeignKey("module.id", onupdate="CASCADE"), nullable=False, server_default="9"
    )


class Log(Base):
    __tablename__ = "log"
    id: Mapped[int] = _int_pk()
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
    id: Mapped[int] = _int_pk()
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


class Request(Base):
    __tablename__ = "request"
    id: Mapped[int] = _int_pk()
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
    id: Mapped[int] = _int_pk()
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
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    serverprofileid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    requestid: Mapped[int] = mapped_column(
        Integer, ForeignKey("request.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    fixedIP: Mapped[str | None] = mapped_column(String(15), nullable=True)
    fixedMAC: Mapped[str | None] = mapped_column(String(17), nullable=True)
    monitored: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class ComputerLoadState(Base):
    __tablename__ = "computerloadstate"
    id: Mapped[int] = _int_pk()
    loadstatename: Mapped[str] = mapped_column(String(24), nullable=False, unique=True)
    prettyname: Mapped[str | None] = mapped_column(String(50), nullable=True)
    est: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ComputerLoadLog(Base):
    __tablename__ = "computerloadlog"
    id: Mapped[int] = _int_pk()
    reservationid: Mapped[int] = mapped_column(
        Integer, ForeignKey("reservation.id", ondelete="CASCADE"), nullable=False, index=True
    )
    computerid: Mapped[int] = mapped_column(Integer, ForeignKey("computer.id"), nullable=False, index=True)
    loadstateid: Mapped[int] = mapped_column(
        Integer, ForeignKey("computerloadstate.id", onupdate="CASCADE"), nullable=False, index=True
    )
    timestamp: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=True)
    additionalinfo: Mapped[str | None] = mapped_column(Text, nullable=True)


class ResourceType(Base):
    __tablename__ = "resourcetype"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(50), nullable=False, unique=True, server_default="")


class Resource(Base):
    __tablename__ = "resource"
    id: Mapped[int] = _int_pk()
    resourcetypeid: Mapped[int] = mapped_column(
        Integer, ForeignKey("resourcetype.id", onupdate="CASCADE"), nullable=False, server_default="0"
    )
    subid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class Variable(Base):
    __tablename__ = "variable"
    id: Mapped[int] = _int_pk()
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    serialization: Mapped[str] = mapped_column(
        Enum("none", "yaml", "phpserialize", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="none",
    )
    value: Mapped[str] = mapped_column(Text, nullable=False)
    setby: Mapped[str | None] = mapped_column(String(128), nullable=True)
    timestamp: Mapped[datetime | None] = mapped_column(VclDateTime, nullable=False)


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
    "OS",
    "Affiliation",
    "Base",
    "Changelog",
    "Computer",
    "ComputerLoadLog",
    "ComputerLoadState",
    "Image",
    "ImageRevision",
    "ImageType",
    "Log",
    "ManagementNode",
    "Module",
    "OSInstallType",
    "OSType",
    "Platform",
    "Provisioning",
    "Request",
    "Reservation",
    "Resource",
    "ResourceType",
    "ServerRequest",
    "State",
    "User",
    "VMHost",
    "VMProfileRow",
    "Variable",
    "VclDateTime",
    "VcldSemaphore",
]
