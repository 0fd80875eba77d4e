"""Images, their revisions, image types and operating systems."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import Base, VclDateTime, int_pk


class ImageType(Base):
    __tablename__ = "imagetype"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)


class OSType(Base):
    __tablename__ = "OStype"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)


class OSInstallType(Base):
    __tablename__ = "OSinstalltype"
    id: Mapped[int] = int_pk()
    name: Mapped[str] = mapped_column(String(30), nullable=False, unique=True)


class OS(Base):
    __tablename__ = "OS"
    id: Mapped[int] = int_pk()
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
    id: Mapped[int] = int_pk()
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
    id: Mapped[int] = int_pk()
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


__all__ = ["OS", "Image", "ImageRevision", "ImageType", "OSInstallType", "OSType"]
