"""A user ends a reservation while its load runs (issue 18), on the real stack.

Each load stands paused at a failpoint (``VCL_FAILPOINT_ACTION=pause``) in a real prefork worker
while the test cancels it with exactly the web's ``deleteRequest`` writes
(:func:`worker.devkit.web_writes.end_request`); then the load goes on (or its child is killed), the
dispatcher runs on a node of its own until nothing is left to do, and the test asserts: the request
completed (``complete/deleted``, then removed), the computer ``available`` or ``failed`` (never
``reloading``/``reload``), no domain or overlay but the computer's one loaded disk, and a following
reservation on the computer loads. One test cancels through VCL's real PHP web
(``XMLRPCendRequest``). Each cancel is counted in "cancels during a load".
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from worker import dispatcher
from worker.app import vmhost_queue
from worker.db.engine import make_engine, make_session_factory
from worker.db.store import VclStore
from worker.devkit.celery_worker import start_celery_worker
from worker.devkit.database import database_url, mariadb
from worker.devkit.images import qemu_img_info
from worker.devkit.libvirt_env import cleanup_domains
from worker.devkit.require import missing_service
from worker.devkit.web_writes import end_request, extend_request

from .conftest import (
    COUNTERS,
    FaultStack,
    check_loaded,
    lock_kv,
    make_fault_master,
    orphan_overlays,
    own_reservation,
    running_worker,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

# Every step of a load where a cancel can land: before the lock, before the core, inside the core
# (the load finishes, then hands back), after it, before and after the result is recorded.
POINTS = [
    "load.claimed",
    "load.started",
    "core.before_delete_existing",
    "core.before_define",
    "core.after_start",
    "load.loaded",
    "load.before_finish",
    "load.finished",
]
INDICES = (4, 5, 6, 7, 8, 9, 22, 23)
KILL_INDEX = 26
OUTCOMES: dict[str, str] = {}


def _computer(fs: FaultStack, index: int) -> int:
    """Computer ``index`` clean and ``available``; its id."""
    fs.reset_computer(index)
    cid = fs.site.computer_ids[index]
    fs.execute(
        "UPDATE computer SET stateid = (SELECT id FROM state WHERE name = 'available') WHERE id = :c", c=cid
    )
    return cid


def _wait_paused(marker: Path, worker: Any, timeout: float = 120) -> int:
    """The paused child's pid (the failpoint writes it into the marker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text())
        time.sleep(0.1)
    raise AssertionError(f"failpoint never paused at {marker.name}:\n{worker.tail(8000)}")


def _states(fs: FaultStack, request_id: int) -> tuple[str, str] | None:
    return fs.store.request_states(request_id)


def settle(fs: FaultStack, node: int, computer_id: int, worker: Any, seen: list[Any]) -> str:
    """Dispatcher passes until the computer's requests are all done; waits for every task enqueued.
    ``seen`` collects what each pass did. Returns the computer's final state."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = dispatcher.dispatch_once(fs.store, fs.app, node, settings=fs.settings, kv=lock_kv(fs))
        seen.extend(d for d in done if d.action != "skipped" or "held" in d.reason)
        for d in done:
            if d.action == "enqueued":
                result = fs.app.AsyncResult(d.task_id).get(timeout=240, propagate=False)
                assert isinstance(result, dict), f"{result!r}\n{worker.tail(6000)}"
        open_requests = fs.one(
            "SELECT COUNT(*) FROM request rq JOIN reservation rs ON rs.requestid = rq.id"
            " JOIN state s ON s.id = rq.stateid WHERE rs.computerid = :c"
            " AND s.name NOT IN ('complete', 'failed', 'reserved', 'inuse')",
            c=computer_id,
        )[0]
        state = fs.store.computer_state(computer_id)
        busy = [d for d in done if d.action != "skipped"]
        if not busy and open_requests == 0 and state not in ("reloading", "reload", "timeout"):
            return state
        time.sleep(1.0)
    raise AssertionError(
        f"computer {computer_id} never settled: {fs.store.computer_state(computer_id)}, {seen}"
    )


def check_clean(fs: FaultStack, index: int) -> None:
    """At most the computer's one domain (running, on the master) and its one overlay; no orphans."""
    short = fs.short(index)
    doms = fs.domains(short)
    overlays = sorted(p.name for p in fs.datastore.glob(f"{short}_*") if p.suffixes == [".qcow2"])
    assert len(doms) <= 1 and len(overlays) == len(doms), (doms, overlays)
    if doms:
        assert overlays == [f"{short}_{doms[0].rsplit('_', 1)[1]}.qcow2"], (doms, overlays)
        assert qemu_img_info(fs.datastore / overlays[0])["full-backing-filename"] == str(fs.master)
    assert not list(fs.datastore.rglob("*.part"))
    orphans = orphan_overlays(fs)
    COUNTERS["orphan overlays"] += len(orphans)
    assert orphans == [], orphans


def next_reservation_loads(fs: FaultStack, node: int, index: int, worker: Any) -> None:
    _req, res = own_reservation(fs, node, index)
    seen: list[Any] = []
    settle(fs, node, fs.site.computer_ids[index], worker, seen)
    assert [d.action for d in seen if d.reservation_id == res][:1] == ["enqueued"], seen
    check_loaded(fs, res, index)


@pytest.mark.parametrize("point", POINTS)
def test_cancel_at_each_step_of_a_load(fstack: FaultStack, own_node: int, point: str) -> None:
    index = INDICES[POINTS.index(point)]
    cid = _computer(fstack, index)
    request_id, _res = own_reservation(fstack, own_node, index)
    marker = fstack.tmp / f"cancel-{point}-{uuid.uuid4().hex[:6]}"
    env = {"VCL_FAILPOINT": point, "VCL_FAILPOINT_MARKER": str(marker), "VCL_FAILPOINT_ACTION": "pause",
           "VCL_LOCK_LEASE": "6"}  # fmt: skip
    with running_worker(fstack, None, 1, **env) as worker:
        first = dispatcher.dispatch_once(
            fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack)
        )
        (task,) = [d for d in first if d.action == "enqueued"]
        _wait_paused(marker, worker)
        assert end_request(fstack.sf, request_id) == "updated"  # the web's deleteRequest
        COUNTERS["cancels during a load"] += 1
        COUNTERS["faults injected"] += 1
        assert _states(fstack, request_id) == ("deleted", "reserved")
        if point != "load.claimed":
            # The load holds the computer: the dispatcher leaves the deleted request to it.
            held = dispatcher.dispatch_once(
                fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack)
            )
            mine = [d for d in held if d.request_id == request_id]
            assert [d.action for d in mine] == ["skipped"] and "held" in mine[0].reason, held
            assert _states(fstack, request_id) == ("deleted", "reserved")
        Path(f"{marker}.go").touch()
        result = fstack.app.AsyncResult(task.task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict), f"{result!r}\n{worker.tail(8000)}"
        handed_back = _states(fstack, request_id)
        seen: list[Any] = []
        final = settle(fstack, own_node, cid, worker, seen)
        OUTCOMES[point] = f"{result.get('status')}: request {handed_back}, computer {final}"
        print(f"{point}: {OUTCOMES[point]}; passes: {[(d.action, d.reason) for d in seen]}")
        assert final in ("available", "failed"), final
        # Completed, then removed by vcld's remove (complete/deleted is removable at once).
        assert handed_back in (("complete", "deleted"), ("deleted", "reserved")), handed_back
        assert _states(fstack, request_id) is None
        assert handed_back == ("complete", "deleted") or any(
            d.request_id == request_id and d.action == "reclaimed" for d in seen
        ), seen
        check_clean(fstack, index)
        next_reservation_loads(fstack, own_node, index, worker)


def test_cancel_then_the_load_task_dies(fstack: FaultStack, own_node: int) -> None:
    """Cancelled at core.after_define, then the child is killed: the redelivery stands down, the
    computer's lock ends with its lease, and the dispatcher's reclaim reloads it (a fresh disk)."""
    index = KILL_INDEX
    cid = _computer(fstack, index)
    request_id, _res = own_reservation(fstack, own_node, index)
    marker = fstack.tmp / f"cancel-kill-{uuid.uuid4().hex[:6]}"
    env = {"VCL_FAILPOINT": "core.after_define", "VCL_FAILPOINT_MARKER": str(marker),
           "VCL_FAILPOINT_ACTION": "pause", "VCL_LOCK_LEASE": "6"}  # fmt: skip
    with running_worker(fstack, None, 1, **env) as worker:
        first = dispatcher.dispatch_once(
            fstack.store, fstack.app, own_node, settings=fstack.settings, kv=lock_kv(fstack)
        )
        (task,) = [d for d in first if d.action == "enqueued"]
        pid = _wait_paused(marker, worker)
        end_request(fstack.sf, request_id)
        COUNTERS["cancels during a load"] += 1
        COUNTERS["faults injected"] += 1
        os.kill(pid, signal.SIGKILL)
        result = fstack.app.AsyncResult(task.task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "skipped", f"{result!r}\n{worker.tail(8000)}"
        assert fstack.store.computer_state(cid) == "reloading"  # the dead load's state, for now
        seen: list[Any] = []
        final = settle(fstack, own_node, cid, worker, seen)
        OUTCOMES["killed after the cancel"] = f"computer {final}, {[(d.action, d.reason) for d in seen]}"
        assert final == "available"
        assert ("reclaimed", "reload") in [(d.action, d.reason) for d in seen if d.request_id == request_id]
        assert _states(fstack, request_id) is None
        check_clean(fstack, index)
        next_reservation_loads(fstack, own_node, index, worker)


def test_end_time_ends_the_reservation_and_an_extension_keeps_it(fstack: FaultStack, own_node: int) -> None:
    """``request.end`` moved into the past by SQL: an extension (the web's writes) keeps the
    reservation; without it the dispatcher times it out, reclaims it and reloads it onto a fresh
    overlay (the user's overlay, stamped, is replaced), computer ``available``."""
    index = 27
    cid = _computer(fstack, index)
    request_id, res = own_reservation(fstack, own_node, index)
    with running_worker(fstack, None, 1) as worker:
        settle(fstack, own_node, cid, worker, [])
        check_loaded(fstack, res, index)
        (overlay,) = [
            p for p in fstack.datastore.glob(f"{fstack.short(index)}_*") if p.suffixes == [".qcow2"]
        ]
        os.utime(overlay, (1_000_000, 1_000_000))  # the user's disk
        fstack.execute("UPDATE request SET end = NOW() - INTERVAL 1 MINUTE WHERE id = :r", r=request_id)
        extend_request(fstack.sf, request_id, 30)
        kept = dispatcher.dispatch_once(fstack.store, fstack.app, own_node, settings=fstack.settings,
                                        kv=lock_kv(fstack))  # fmt: skip
        assert "ended" not in [d.action for d in kept if d.request_id == request_id], kept
        assert _states(fstack, request_id) == ("reserved", "new")
        fstack.execute("UPDATE request SET end = NOW() - INTERVAL 1 MINUTE WHERE id = :r", r=request_id)
        started = time.monotonic()
        seen: list[Any] = []
        final = settle(fstack, own_node, cid, worker, seen)
        seconds = time.monotonic() - started
    COUNTERS["reservations ended at their end time"] += 1
    COUNTERS["faults injected"] += 1
    mine = [(d.action, d.reason) for d in seen if d.request_id == request_id]
    assert mine[:2] == [("ended", "timeout"), ("reclaimed", "reload")], seen
    OUTCOMES["end time -> available"] = f"{seconds:.1f} s, computer {final}"
    assert final == "available"
    assert _states(fstack, request_id) is None  # complete/timeout, past its end: removed
    assert overlay.exists() and overlay.stat().st_mtime > 1_000_000  # a fresh overlay
    check_clean(fstack, index)


# ---------------------------------------------------------------------- VCL's real web

WEB_PORT = int(os.environ.get("VCL_ENDINGS_WEB_PORT", "18096"))
WEB_MN, WEB_VM, WEB_IMAGE = 101, 102, 101
_WEB_SQL = """
DELETE FROM computerloadlog; DELETE FROM reservation; DELETE FROM request;
UPDATE managementnode SET checkininterval = 1, lastcheckin = NOW() WHERE id = {mn};
UPDATE vmprofile SET datastorepath = '{ds}', vmpath = '{ds}', repositorypath = NULL,
       virtualswitch0 = '{net}', virtualswitch1 = '{net}' WHERE profilename = 'KVM - local storage';
UPDATE computer SET hostname = '{host}.example.org' WHERE id = 101;
UPDATE computer SET hostname = '{vm}.example.org', eth0macaddress = '{mac0}', eth1macaddress = '{mac1}',
       stateid = 2 WHERE id = {vm_id};
"""


@dataclass
class WebSite:
    web: Any
    db_url: str
    store: VclStore
    vm: str  # the VM's short name
    host: str  # the VM host's short name


@pytest.fixture(scope="module")
def web_site(fstack: FaultStack) -> Iterator[WebSite]:
    from tests.vcld.runners import VclWeb, runners_present, sql

    if not runners_present():
        missing_service("needs ../shared/vcl/web")
    run = uuid.uuid4().hex[:6]
    db = f"vclendings_{run}"
    web = VclWeb(db=db, port=WEB_PORT, workdir=fstack.tmp / f"web-{run}")
    vm, host = f"flt{run}w", f"flt{run}h"
    master = fstack.datastore / "linux-ProbeKVM-101-v0.qcow2"
    try:
        web.start()
        make_fault_master(master)
        values = {"mn": WEB_MN, "ds": fstack.datastore, "net": fstack.network, "host": host, "vm": vm,
                  "vm_id": WEB_VM, "mac0": "52:54:00:7e:00:01", "mac1": "52:54:00:7e:00:02"}  # fmt: skip
        sql(db, _WEB_SQL.format(**values))
        engine = make_engine(database_url(db))
        yield WebSite(web, database_url(db), VclStore(make_session_factory(engine)), vm, host)
        engine.dispose()
    finally:
        web.stop()
        cleanup_domains(f"{vm}_", fstack.settings.libvirt_uri, wait=120)
        for p in fstack.datastore.glob(f"{vm}_*"):
            p.unlink(missing_ok=True)
        mariadb("-e", f"DROP DATABASE IF EXISTS `{db}`")
        master.unlink(missing_ok=True)


def test_cancel_through_the_real_web_during_a_load(fstack: FaultStack, web_site: WebSite) -> None:
    """XMLRPCendRequest through VCL's PHP web while the load stands at core.after_start."""
    web, store = web_site.web, web_site.store
    settings = replace(fstack.settings, database_url=web_site.db_url)
    marker = fstack.tmp / f"cancel-web-{uuid.uuid4().hex[:6]}"
    env = {**fstack.env, **settings.to_env(), "VCL_FAILPOINT": "core.after_start", "VCL_LOCK_LEASE": "6",
           "VCL_FAILPOINT_MARKER": str(marker), "VCL_FAILPOINT_ACTION": "pause"}  # fmt: skip
    worker = start_celery_worker(env, [vmhost_queue(web_site.host)], fstack.tmp, host=web_site.host,
                                 prefix="fltweb", concurrency=1)  # fmt: skip

    def one_pass() -> list[dispatcher.Dispatched]:
        return dispatcher.dispatch_once(store, fstack.app, WEB_MN, settings=settings, kv=lock_kv(fstack))

    try:
        one_pass()  # the node checks in: the web hands out computers only then
        added = web.rpc("XMLRPCaddRequest", WEB_IMAGE, "now", 60)
        assert added["status"] == "success", added
        request_id = int(added["requestid"])
        (task,) = [d for d in one_pass() if d.action == "enqueued"]
        _wait_paused(marker, worker)
        assert web.rpc("XMLRPCendRequest", request_id)["status"] == "success"
        COUNTERS["cancels during a load"] += 1
        assert store.request_states(request_id) == ("deleted", "reserved")
        Path(f"{marker}.go").touch()
        result = fstack.app.AsyncResult(task.task_id).get(timeout=240, propagate=False)
        assert isinstance(result, dict) and result["status"] == "skipped", f"{result!r}\n{worker.tail(8000)}"
        assert store.request_states(request_id) == ("complete", "deleted")
        assert store.computer_state(WEB_VM) == "available"
        OUTCOMES["real web, core.after_start"] = str(result["detail"])
        one_pass()  # vcld's remove
        assert store.request_states(request_id) is None
        # The load finished and handed back: one fresh guest, never given to the user.
        assert len(fstack.domains(web_site.vm)) == 1
        # A following reservation through the web loads.
        again = web.rpc("XMLRPCaddRequest", WEB_IMAGE, "now", 60)
        assert again["status"] == "success", again
        (task2,) = [d for d in one_pass() if d.action == "enqueued"]
        result2 = fstack.app.AsyncResult(task2.task_id).get(timeout=240, propagate=False)
        assert isinstance(result2, dict) and result2["status"] == "done", f"{result2!r}\n{worker.tail(8000)}"
        assert store.request_states(int(again["requestid"])) == ("reserved", "new")
        assert store.computer_state(WEB_VM) == "reserved"
        assert len(fstack.domains(web_site.vm)) == 1
    finally:
        worker.stop()


def test_outcomes_summary() -> None:
    """Prints each outcome (``-s`` shows it): per failpoint, after a kill, through the web, end time."""
    for point, outcome in OUTCOMES.items():
        print(f"{point:<38} {outcome}")
