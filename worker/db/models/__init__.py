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

The models are grouped by area in the modules of this package; everything is re-exported here so
that ``from worker.db import models as m`` reaches every table (and registers all of them on
``Base.metadata`` before ``create_all``).
"""

from __future__ import annotations

from worker.db.models.base import Base, VclDateTime
from worker.db.models.computers import Computer, Module, Platform, Provisioning, VMHost, VMProfileRow
from worker.db.models.connect import ConnectMethodPort, connectmethodmap
from worker.db.models.images import OS, Image, ImageRevision, ImageType, OSInstallType, OSType
from worker.db.models.requests import (
    Changelog,
    ComputerLoadLog,
    ComputerLoadState,
    Log,
    Request,
    Reservation,
    ServerRequest,
    VcldSemaphore,
)
from worker.db.models.resources import ResourceGroupMember, ResourceMap
from worker.db.models.site import Affiliation, ManagementNode, Resource, ResourceType, State, User, Variable

__all__ = [
    "OS",
    "Affiliation",
    "Base",
    "Changelog",
    "Computer",
    "ComputerLoadLog",
    "ComputerLoadState",
    "ConnectMethodPort",
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
    "ResourceGroupMember",
    "ResourceMap",
    "ResourceType",
    "ServerRequest",
    "State",
    "User",
    "VMHost",
    "VMProfileRow",
    "Variable",
    "VclDateTime",
    "VcldSemaphore",
    "connectmethodmap",
]
