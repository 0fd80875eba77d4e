"""Computers, VM hosts, VM profiles and how a computer is provisioned."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import ZERO_DATE_SQLITE, Base, VclDateTime, int_pk


class Module(Base):
    __tablename__ = "module"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)
    prettyname: Mapped[str] = mapped_column(String(70), nullable=False)
    description: Mapped[str] = mapped_column(String(255), nullable=False)
    perlpackage: Mapped[str] = mapped_column(String(150), nullable=False)


class Provisioning(Base):
    __tablename__ = "provisioning"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)
    prettyname: Mapped[str] = mapped_column(String(70), nullable=False)
    moduleid: Mapped[int] = mapped_column(
        Integer, ForeignKey("module.id", onupdate="CASCADE"), nullable=False, index=True
    )


class Platform(Base):
    __tablename__ = "platform"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(20), nullable=False, unique=True, server_default="")


class VMProfileRow(Base):
    __tablename__ = "vmprofile"
    id: Mapped[int] = int_pk()
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
    id: Mapped[int] = int_pk()
    # FK to computer.id exists in vcl.sql; not declared here (cycle with computer.vmhostid).
    computerid: Mapped[int] = mapped_column(Integer, nullable=False)
    vmprofileid: Mapped[int] = mapped_column(
        Integer, ForeignKey("vmprofile.id", onupdate="CASCADE"), nullable=False, index=True
    )


class Computer(Base):
    __tablename__ = "computer"
    id: Mapped[int] = int_pk()
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


__all__ = ["Computer", "Module", "Platform", "Provisioning", "VMHost", "VMProfileRow"]
