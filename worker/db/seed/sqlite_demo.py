"""The embedded SQLite demo database: the mapped tables plus the ``vcl.sql`` seed rows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, insert, inspect, select
from sqlalchemy.orm import Session

from worker.db import models as m
from worker.db.errors import VclDataError
from worker.db.seed.data import (
    IMAGETYPES,
    KVM_PROFILE_NAME,
    LOADSTATES,
    MODULES,
    OSES,
    OSINSTALLTYPES,
    OSTYPES,
    PLATFORMS,
    PROVISIONING,
    RESOURCETYPES,
    STATES,
    VARIABLES,
)


def create_demo_schema(engine: Engine) -> None:
    """SQLite: create the mapped tables and insert the vcl.sql seed rows the flows need.

    MariaDB/MySQL: the schema must come from ``vcl.sql``; this only checks it is there.
    Idempotent on SQLite (seed rows are inserted only into an empty ``state`` table).
    """
    if engine.dialect.name != "sqlite":
        if not inspect(engine).has_table("state"):
            raise VclDataError(
                f"database {engine.url.database!r} has no VCL schema: load vcl.sql into it first"
            )
        return
    m.Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        if s.execute(select(func.count()).select_from(m.State)).scalar_one():
            return
        _seed_rows(s)


def _seed_rows(s: Session) -> None:
    old = datetime(1980, 1, 1)
    s.execute(insert(m.State), [{"id": i, "name": n} for i, n in STATES])
    s.execute(
        insert(m.ComputerLoadState),
        [{"loadstatename": n, "prettyname": p, "est": e} for n, p, e in LOADSTATES],
    )
    s.execute(
        insert(m.Module),
        [
            {"id": i, "name": n, "prettyname": p, "description": "", "perlpackage": pk}
            for i, n, p, pk in MODULES
        ],
    )
    s.execute(
        insert(m.Provisioning),
        [{"id": i, "name": n, "prettyname": p, "moduleid": mid} for i, n, p, mid in PROVISIONING],
    )
    s.execute(insert(m.ImageType), [{"id": i, "name": n} for i, n in IMAGETYPES])
    s.execute(insert(m.OSType), [{"id": i, "name": n} for i, n in OSTYPES])
    s.execute(insert(m.OSInstallType), [{"id": i, "name": n} for i, n in OSINSTALLTYPES])
    s.execute(
        insert(m.OS),
        [
            {"id": i, "name": n, "prettyname": p, "type": t, "installtype": it, "minram": ram,
             "sourcepath": sp, "moduleid": mid}
            for i, n, p, t, it, ram, sp, mid in OSES
        ],
    )  # fmt: skip
    s.execute(insert(m.Platform), [{"id": i, "name": n} for i, n in PLATFORMS])
    # vcl.sql's connect methods: SSH (22) for linux/unix, RDP (3389) for windows/osx.
    s.execute(
        insert(m.ConnectMethodPort),
        [{"id": 1, "connectmethodid": 1, "port": 22, "protocol": "TCP"},
         {"id": 2, "connectmethodid": 2, "port": 3389, "protocol": "TCP"},
         {"id": 3, "connectmethodid": 3, "port": 3389, "protocol": "TCP"}],
    )  # fmt: skip
    s.execute(
        insert(m.connectmethodmap),
        [
            {"connectmethodid": cm, "OStypeid": ost, "disabled": 0}
            for cm, ost in ((1, 2), (1, 3), (2, 1), (3, 4))
        ],
    )
    s.execute(
        insert(m.Affiliation),
        [{"id": 1, "name": "Local", "dataUpdateText": ""}, {"id": 2, "name": "Global", "dataUpdateText": ""}],
    )
    s.execute(
        insert(m.User),
        [
            {"id": 1, "unityid": "admin", "affiliationid": 1, "firstname": "vcl", "lastname": "admin",
             "email": "root@localhost", "adminlevelid": 3, "lastupdated": datetime(2007, 5, 17, 9, 58, 39)},
            {"id": 2, "unityid": "vclreload", "affiliationid": 1, "firstname": "vcl", "lastname": "reload",
             "email": "", "adminlevelid": 1},
            {"id": 3, "unityid": "vclsystem", "affiliationid": 1, "firstname": "vcl", "lastname": "system",
             "email": "", "adminlevelid": 1},
        ],
    )  # fmt: skip
    s.execute(
        insert(m.Image).values(
            id=1, name="noimage", prettyname="No Image", ownerid=1, imagetypeid=1, platformid=1, OSid=2,
            minram=0, minprocnumber=1, minprocspeed=0, minnetwork=10, reloadtime=0, deleted=0, test=0,
            forcheckout=0, maxinitialtime=0, project="vcl", size=0,
        )
    )  # fmt: skip
    s.execute(
        insert(m.ImageRevision).values(
            id=1, imageid=1, revision=0, userid=1, datecreated=old, deleted=0, production=1,
            imagename="noimage",
        )
    )  # fmt: skip
    s.execute(insert(m.ResourceType), [{"id": i, "name": n} for i, n in RESOURCETYPES])
    s.execute(insert(m.Resource), [{"id": 4, "resourcetypeid": 13, "subid": 1}])
    s.execute(
        insert(m.Variable),
        [{"name": n, "serialization": "none", "value": v, "timestamp": old} for n, v in VARIABLES],
    )
    # vcl.sql inserts 5 vmprofiles; the KVM one is the 5th (id 5).
    s.execute(
        insert(m.VMProfileRow).values(
            id=5, profilename=KVM_PROFILE_NAME, imageid=1, repositorypath=None, repositoryimagetypeid=7,
            datastorepath="/var/lib/libvirt/images", datastoreimagetypeid=7,
            vmpath="/var/lib/libvirt/images", virtualswitch0="br0", virtualswitch1="br1", vmdisk="dedicated",
        )
    )  # fmt: skip


__all__ = ["create_demo_schema"]
