"""A seeded VCL site and what the web front end inserts into it: requests, images, the poll load."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, insert, text
from sqlalchemy.orm import Session, sessionmaker

from worker.db import models as m
from worker.db.seed import (
    SeededSite,
    SiteSpec,
    create_capture_request,
    create_request,
    create_tomaintenance_request,
)


def host_site_spec(
    datastore: Path, network: str, vmhost: str, vm_hostnames: tuple[str, ...], **overrides: Any
) -> SiteSpec:
    """One KVM host whose VMs and masters share ``datastore`` and whose two NICs join ``network``."""
    fields: dict[str, Any] = {
        "datastore_path": str(datastore),
        "vm_path": str(datastore),
        "repository_path": None,
        "virtualswitch0": network,
        "virtualswitch1": network,
        "vmhost_hostname": f"{vmhost}.example.org",
        "vm_hostnames": vm_hostnames,
    }
    fields.update(overrides)
    return SiteSpec(**fields)


@dataclass(kw_only=True)
class SiteRequests:
    """The web front end's inserts for computer ``index`` of ``site`` (all default to its image)."""

    sf: sessionmaker[Session]
    site: SeededSite

    def new_request(
        self,
        index: int = 0,
        state: str = "new",
        *,
        laststate: str | None = None,
        image_id: int | None = None,
        imagerevision_id: int | None = None,
    ) -> tuple[int, int]:
        """A request + reservation as the new-reservation form makes it: (request_id, reservation_id)."""
        return create_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            image_id=image_id or self.site.image_id,
            imagerevision_id=imagerevision_id or self.site.imagerevision_id,
            management_node_id=self.site.management_node_id,
            state=state,
            laststate=laststate or state,
        )

    def new_reservation(
        self, index: int = 0, image_id: int | None = None, imagerevision_id: int | None = None
    ) -> int:
        """A ``new`` request on computer ``index``; only its reservation id (what tasks take)."""
        return self.new_request(index, image_id=image_id, imagerevision_id=imagerevision_id)[1]

    def capture_request(self, index: int = 0) -> tuple[int, int, int]:
        """An ``image`` request: (request_id, reservation_id, new imagerevision_id)."""
        return create_capture_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            image_id=self.site.image_id,
            management_node_id=self.site.management_node_id,
        )

    def maintenance_request(self, index: int = 0) -> tuple[int, int]:
        """A ``tomaintenance`` request: (request_id, reservation_id)."""
        return create_tomaintenance_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            management_node_id=self.site.management_node_id,
        )

    def one(self, sql: str, **params: Any) -> Row[Any]:
        with self.sf() as s:
            return s.execute(text(sql), params).one()

    def execute(self, sql: str, **params: Any) -> None:
        with self.sf.begin() as s:
            s.execute(text(sql), params)

    def add_image(self, prettyname: str, imagename: str) -> tuple[int, int]:
        """A production image + revision 0 like the seeded one (the master file is the caller's)."""
        with self.sf.begin() as s:
            s.execute(
                text(
                    "INSERT INTO image (name, prettyname, ownerid, imagetypeid, platformid, OSid, minram,"
                    " minprocnumber, minprocspeed, minnetwork, reloadtime, deleted, test, lastupdate,"
                    " forcheckout, maxinitialtime, project, size, architecture)"
                    " SELECT :name, :pretty, ownerid, imagetypeid, platformid, OSid, minram, minprocnumber,"
                    " minprocspeed, minnetwork, reloadtime, 0, 0, NOW(), forcheckout, maxinitialtime,"
                    " project, 0, architecture FROM image WHERE id = :src"
                ),
                {"name": imagename, "pretty": prettyname, "src": self.site.image_id},
            )
            image_id = int(s.execute(text("SELECT id FROM image WHERE name=:n"), {"n": imagename}).one()[0])
            s.execute(
                text(
                    "INSERT INTO imagerevision (imageid, revision, userid, datecreated, deleted, production,"
                    " imagename, autocaptured) VALUES (:i, 0, 1, NOW(), 0, 1, :n, 0)"
                ),
                {"i": image_id, "n": imagename},
            )
            rev_id = int(
                s.execute(text("SELECT id FROM imagerevision WHERE imageid=:i"), {"i": image_id}).one()[0]
            )
        return image_id, rev_id


def add_management_node(sf: sessionmaker[Session], site: SeededSite, hostname: str) -> int:
    """Another management node like the seeded one (a dispatcher of its own that sees only the
    reservations moved to it with :func:`move_reservation`); its id."""
    with sf.begin() as s:
        s.execute(
            text(
                "INSERT INTO managementnode (IPaddress, hostname, ownerid, stateid, checkininterval,"
                " installpath, imagelibenable, `keys`, sshport, publicIPconfiguration, availablenetworks)"
                " SELECT IPaddress, :h, ownerid, stateid, checkininterval, installpath, imagelibenable,"
                " `keys`, sshport, publicIPconfiguration, availablenetworks"
                " FROM managementnode WHERE id = :mn"
            ),
            {"h": hostname, "mn": site.management_node_id},
        )
        return int(
            s.execute(text("SELECT id FROM managementnode WHERE hostname = :h"), {"h": hostname}).one()[0]
        )


def move_reservation(sf: sessionmaker[Session], reservation_id: int, management_node_id: int) -> None:
    with sf.begin() as s:
        s.execute(
            text("UPDATE reservation SET managementnodeid = :mn WHERE id = :r"),
            {"mn": management_node_id, "r": reservation_id},
        )


def _poll_kind(i: int, now: datetime) -> tuple[str, str, datetime, datetime]:
    """Request ``i`` of the finished set: a future reservation, a complete or failed request whose
    end has not passed, or a future reload, in turn."""
    k = i % 4
    if k == 0:
        return "new", "new", now + timedelta(days=1 + i % 30), now + timedelta(days=1 + i % 30, hours=2)
    if k == 1:
        return "complete", "inuse", now - timedelta(hours=1), now + timedelta(hours=3)
    if k == 2:
        return "failed", "reserved", now - timedelta(hours=1), now + timedelta(hours=3)
    return "reload", "reload", now + timedelta(hours=3 + i % 50), now + timedelta(hours=4 + i % 50)


def seed_poll_requests(
    sf: sessionmaker[Session], site: SeededSite, finished: int = 10_000, due: int = 100
) -> None:
    """The dispatcher-poll load: ``finished`` reservations vcld has nothing to do with yet plus ``due``
    ``new`` requests starting now, all on ``site``'s management node (db tests and bench B5)."""
    with sf() as s:
        now = s.execute(text("SELECT NOW()")).scalar_one()
    kinds = [_poll_kind(i, now) for i in range(finished)]
    kinds += [("new", "new", now - timedelta(minutes=i % 5), now + timedelta(hours=1)) for i in range(due)]
    with sf.begin() as s:
        ids = {n: i for n, i in s.execute(text("SELECT name, id FROM state")).all()}
        reqs = [
            {"stateid": ids[st], "laststateid": ids[lst], "userid": 1, "start": a, "end": b,
             "daterequested": now}
            for st, lst, a, b in kinds
        ]  # fmt: skip
        first = s.execute(text("SELECT COALESCE(MAX(id), 0) FROM request")).scalar_one()
        s.execute(insert(m.Request), reqs)
        s.execute(
            insert(m.Reservation),
            [
                {"requestid": first + 1 + j, "computerid": site.computer_ids[0], "imageid": site.image_id,
                 "imagerevisionid": site.imagerevision_id, "managementnodeid": site.management_node_id}
                for j in range(len(reqs))
            ],
        )  # fmt: skip
    with sf() as s:
        s.execute(text("ANALYZE TABLE reservation, request"))
