"""Seed a VCL site the way the web front end does (used by the demo, the tests and the benchmarks).

* :func:`create_demo_schema` (:mod:`.sqlite_demo`, rows in :mod:`.data`) builds the embedded SQLite
  demo database: the mapped tables plus the ``vcl.sql`` seed rows the flows need, with their real
  ids. On MariaDB/MySQL the schema and seeds come from ``vcl.sql`` itself
  (``mariadb vcl < vcl.sql``); there it only checks they are present.
* :func:`seed_site` (:mod:`.site`) adds a management node, a KVM host, a vmprofile, VM computers and
  one image (``image.php:addResource`` naming) - what an admin does in the web UI.
* :func:`create_request`, :func:`create_capture_request`, :func:`create_tomaintenance_request`
  (:mod:`.web_requests`) insert requests as the web does for a new reservation, ``AJupdateImage``
  and ``AJvmFromHost``.
"""

from __future__ import annotations

from worker.db.seed.site import SeededSite, SiteSpec, seed_site
from worker.db.seed.sqlite_demo import create_demo_schema
from worker.db.seed.web_requests import create_capture_request, create_request, create_tomaintenance_request

__all__ = [
    "SeededSite",
    "SiteSpec",
    "create_capture_request",
    "create_demo_schema",
    "create_request",
    "create_tomaintenance_request",
    "seed_site",
]
