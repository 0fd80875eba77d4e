"""Fault-injection suite on the real stack, fully private so it can be broken on purpose:
its own ``redis-server`` (AOF ``appendfsync everysec``, no RDB), its own ``mariadbd`` loaded from
vcl.sql, a datastore under /var/lib/libvirt/images, an isolated libvirt network and prefork
``celery worker`` subprocesses. A session-finish hook prints the counters (terminal summary)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.images import make_master, qemu_img_info, sha256
from worker.devkit.libvirt_env import SYSTEM_URI
from worker.devkit.services import PrivateMariaDB, PrivateRedis, free_port
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.hypervisors.host import LibvirtHost
from worker.reaper import plan_reap

N_VMS = 30
# The fault suite's masters: 64 MiB, the first 2 MiB of data, read-only (as the stack's own).
make_fault_master = partial(make_master, pattern=0x5A, data_mb=2, mode=0o444)

# Counters printed at the end of the session (pytest_terminal_summary).
COUNTERS: dict[str, int] = {
    "faults injected": 0,
    "reservations checked": 0,
    "reservations lost": 0,
    "duplicate domains": 0,
    "orphan overlays": 0,
    "masters changed": 0,
    "stuck pending": 0,
    "bad inputs tried": 0,
    "bad inputs rejected": 0,
    "cancels during a load": 0,
    "reservations ended at their end time": 0,
    "late calls refused": 0,
    "wrong-host deliveries refused": 0,
    "host-key mismatches refused": 0,
}
_USED = {"faults": False}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _USED["faults"]:
        return
    terminalreporter.section("vcl-worker fault suite")
    width = max(map(len, COUNTERS))
    for key, value in COUNTERS.items():
        terminalreporter.write_line(f"{key:<{width}} {value}")


@dataclass(kw_only=True)
class FaultStack(Stack):
    redis: PrivateRedis
    mariadb: PrivateMariaDB
    tmp: Path
    master_sums: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def fstack() -> Iterator[FaultStack]:
    _USED["faults"] = True
    run_id = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix=f"vclfaults-{run_id}-"))
    rds = PrivateRedis(free_port(), tmp / "redis")
    mdb = PrivateMariaDB(free_port(), tmp / "mariadb")
    config = StackConfig(
        tag="flt", run_id=run_id, vms=N_VMS, redis_url=rds.url, redis_dbs=(0, 1, 2), mariadb_port=mdb.port,
        repository=True, site={"image_prettyname": f"Fault Base {run_id}", "image_minram": 256,
                               "mac_seed": 0x71},
    )  # fmt: skip
    try:
        rds.start()
        mdb.install()
        mdb.start()
        with open_stack(config, FaultStack, redis=rds, mariadb=mdb, tmp=tmp) as fs:
            fs.master_sums[str(fs.master)] = sha256(fs.master)
            yield fs
            # No request may stay pending once the suite is done with it.
            COUNTERS["stuck pending"] += stuck_pending(fs)
            # Masters never change, whatever the suite did.
            for path, digest in fs.master_sums.items():
                if Path(path).exists() and sha256(path) != digest:
                    COUNTERS["masters changed"] += 1
    finally:
        mdb.stop()
        rds.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- celery workers


Worker = CeleryWorker


@contextlib.contextmanager
def running_worker(
    fs: FaultStack, queues: list[str] | None = None, concurrency: int = 2, **env: str
) -> Iterator[Worker]:
    with fs.running_worker(
        fs.tmp, queues=queues, concurrency=concurrency, env=env, timeout=60,
        extra_args=("--without-mingle", "--without-gossip"),
    ) as w:  # fmt: skip
        yield w


def send(fs: FaultStack, task: str, reservation_id: int, queue: str | None = None) -> Any:
    return fs.send(task, reservation_id, queue)


def lock_kv(fs: Stack) -> redis.Redis:
    """The stack's lock Redis: where the dispatcher remembers task ids, as ``vcl-worker dispatch``."""
    return redis.Redis.from_url(fs.settings.lock_redis_url)


# ---------------------------------------------------------------------- checks


def stuck_pending(fs: Stack) -> int:
    """Requests the worker claimed (a ``begin`` row naming a Celery task) and left ``pending``. A
    request a test wrote as pending itself (a bad-input skip case) was never claimed: not counted."""
    row = fs.one(
        "SELECT COUNT(DISTINCT rq.id) FROM request rq JOIN reservation rs ON rs.requestid = rq.id"
        " JOIN computerloadlog l ON l.reservationid = rs.id"
        " WHERE rq.stateid = (SELECT id FROM state WHERE name = 'pending')"
        " AND l.loadstateid = (SELECT id FROM computerloadstate WHERE loadstatename = 'begin')"
        " AND l.additionalinfo LIKE 'celery task %'"
    )
    return int(row[0])


def request_states(fs: Stack, reservation_id: int) -> tuple[str, str]:
    found = fs.store.reservation_request(reservation_id)
    assert found is not None
    return found[1], found[2]


def loadlog(fs: FaultStack, reservation_id: int) -> list[str]:
    return [e.loadstatename for e in fs.store.loadlog(reservation_id)]


def orphan_overlays(fs: FaultStack) -> list[str]:
    host = LibvirtHost(SYSTEM_URI)
    try:
        return [o.name for o in plan_reap(fs.store, host, fs.vmhost, fs.settings.roots).orphans]
    finally:
        host.close()


def check_loaded(
    fs: FaultStack, reservation_id: int, index: int, master: Path | None = None, state: str = "reserved"
) -> None:
    """Exactly one domain (running) and one overlay for the computer, backed by ``master``; request
    reserved/new, computer reserved, one loadimagecomplete; masters unchanged. Updates the counters."""
    COUNTERS["reservations checked"] += 1
    short = fs.short(index)
    cid = fs.site.computer_ids[index]
    req = fs.store.reservation_request(reservation_id)
    names = loadlog(fs, reservation_id)
    doms = fs.domains(short)
    overlays = sorted(p.name for p in fs.datastore.glob(f"{short}_*"))
    parts = sorted(p.name for p in fs.datastore.rglob("*.part"))
    lost = req is None or req[1:] != (state, "new") or fs.store.computer_state(cid) != "reserved"
    lost = lost or names.count("loadimagecomplete") != 1 or names.count("nodeready") != 1
    COUNTERS["reservations lost"] += int(lost)
    COUNTERS["duplicate domains"] += max(len(doms) - 1, 0)
    orphans = orphan_overlays(fs)
    COUNTERS["orphan overlays"] += len(orphans)
    assert not lost, (req, fs.store.computer_state(cid), names)
    assert len(doms) == 1, doms
    assert overlays == [f"{short}_{doms[0].rsplit('_', 1)[1]}.qcow2"], overlays
    assert parts == [], parts
    assert orphans == [], orphans
    c = fs.conn()
    try:
        assert c.lookupByName(doms[0]).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        c.close()
    info = qemu_img_info(fs.datastore / overlays[0])
    assert info["full-backing-filename"] == str(master or fs.master), info
    for path, digest in fs.master_sums.items():
        assert sha256(path) == digest, f"master {path} changed"


@pytest.fixture(scope="session")
def own_node(fstack: FaultStack) -> int:
    """A management node of its own for the dispatcher tests: a dispatcher pass there sees only the
    reservations a test moved to it, never another test's requests on the seeded node."""
    from worker.devkit.site import add_management_node

    mn = add_management_node(fstack.sf, fstack.site, f"mn2-{fstack.run_id}.example.org")
    fstack.execute("UPDATE managementnode SET checkininterval = 1 WHERE id = :mn", mn=mn)
    return mn


def own_reservation(fs: FaultStack, node: int, index: int, **kw: Any) -> tuple[int, int]:
    """A ``new`` request on computer ``index`` served by management node ``node``."""
    from worker.devkit.site import move_reservation

    request_id, reservation_id = fs.new_request(index, **kw)
    move_reservation(fs.sf, reservation_id, node)
    return request_id, reservation_id
