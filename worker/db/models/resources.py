"""VCL's resource groups and how they are mapped to each other (``resourcemap``).

The web assigns a computer's reservations to a management node through these: the computer's group
(resource type 12, computer) is mapped to the node's group (16, managementnode), in either column
order. Both tables have composite primary keys in vcl.sql; their foreign keys to ``resourcegroup``
(not mapped) are not declared.
"""

from __future__ import annotations

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models.base import Base


class ResourceGroupMember(Base):
    __tablename__ = "resourcegroupmembers"
    resourceid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    resourcegroupid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class ResourceMap(Base):
    __tablename__ = "resourcemap"
    resourcegroupid1: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    resourcetypeid1: Mapped[int] = mapped_column(Integer, nullable=False, server_default="13")
    resourcegroupid2: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    resourcetypeid2: Mapped[int] = mapped_column(Integer, nullable=False, server_default="12")


__all__ = ["ResourceGroupMember", "ResourceMap"]
