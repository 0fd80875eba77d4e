"""A site's own post-load hook (``VCL_POST_LOAD=tests.core.postload_marker:mark``) for the tests:
it logs in like a site's hook would and appends one line per run to ``/root/postload-marks``."""

from __future__ import annotations

import time

from worker.hypervisors import postload
from worker.reservation import Reservation

MARKS = "/root/postload-marks"


def mark(r: Reservation, address: str) -> None:
    login = postload.login_for(r, address, host_keys=None)  # a site's hook: the core checked the key
    assert login is not None
    with postload.GuestShell(login) as shell:
        shell.check(["sh", "-c", f"echo 'reservation={r.reservation_id} at={time.time():.3f}' >> {MARKS}"])
