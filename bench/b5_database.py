"""B5: SQL statements per reservation read, load and capture (flows run in this process on an
engine with a cursor listener), and the dispatcher poll on 10,000 finished + 100 due requests
against the same SELECT on a raw DB-API cursor."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis

from bench.b4_capture import CAPTURE_COMPUTER
from bench.common import med, ratio, timeit
from bench.stack import BenchStack
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SiteSpec, seed_site
from worker.db.store import VclStore
from worker.devkit.database import create_test_database, drop_test_database
from worker.devkit.site import seed_poll_requests
from worker.devkit.sqlcount import counting_statements, statement_kinds
from worker.tasks.capture_flow import run_capture
from worker.tasks.deps import TaskDeps
from worker.tasks.flows import run_load


class _Hooks:
    """Task hooks of an in-process flow: no progress, no retry, an owner token like a task id."""

    def __init__(self) -> None:
        self._owner = uuid.uuid4().hex

    def progress(self, stage: str, percent: float, message: str = "") -> None:
        pass

    def may_retry(self) -> bool:
        return False

    @property
    def owner(self) -> str | None:
        return self._owner


def _statement_counts(stack: BenchStack) -> dict[str, Any]:
    idx = CAPTURE_COMPUTER + 1
    hooks = _Hooks()
    # The stack's store and settings, and the Redis of its locks: what a task resolves from wiring.
    deps = TaskDeps(
        store=stack.store, settings=stack.settings, kv=redis.Redis.from_url(stack.settings.lock_redis_url)
    )
    stack.reset_computer(idx)
    res = stack.new_reservation(idx)
    with counting_statements(stack.engine) as read_stmts:
        stack.store.load_reservation(res)
    with counting_statements(stack.engine) as load_stmts:
        value = run_load(hooks, res, deps=deps)
    conn = stack.conn()
    try:
        conn.lookupByName(value["domain"]).destroy()
    finally:
        conn.close()
    _req, cap_res, _rev = stack.capture_request(idx)
    with counting_statements(stack.engine) as capture_stmts:
        cap = run_capture(hooks, cap_res, deps=deps)
    Path(cap["disks"]["master"]).chmod(0o644)
    Path(cap["disks"]["master"]).unlink()
    stack.reset_computer(idx)
    return {
        "read_reservation_statements": len(read_stmts),
        "load_statements": len(load_stmts),
        "capture_statements": len(capture_stmts),
        "load_statement_kinds": statement_kinds(load_stmts),
        "capture_statement_kinds": statement_kinds(capture_stmts),
    }


def _poll(stack: BenchStack, repeat: int) -> tuple[list[float], list[float], list[float], int]:
    """Its own database with 10,000 finished/future and 100 due requests (as tests/db's poll test)."""
    url = create_test_database("vclbenchpoll")
    stack.defer(drop_test_database, url)
    engine = make_engine(url)
    try:
        sf = make_session_factory(engine)
        store = VclStore(sf)
        site = seed_site(
            sf, SiteSpec(vm_hostnames=("pollvm.example.org",), vmhost_hostname="pollhost.example.org")
        )
        seed_poll_requests(sf, site)
        mn = site.management_node_id
        with counting_statements(engine) as due_stmts:
            due = store.find_due_requests(mn)  # warm-up: state cache, connection
        assert len(due) == 100 and {d.action for d in due} == {"start"}, len(due)
        n = max(repeat, 7)
        find_s = timeit(lambda: store.find_due_requests(mn), n)
        poll_s = timeit(lambda: (store.update_lastcheckin(mn), store.find_due_requests(mn)), n)
        # Baseline: the same SELECT(s) on a raw DB-API cursor, rows fetched, no ORM.
        selects = [(st, p) for st, p in due_stmts if st.lstrip().upper().startswith("SELECT")]
        raw_conn = engine.raw_connection()
        try:
            cur = raw_conn.cursor()

            def raw() -> None:
                for st, p in selects:
                    cur.execute(st, p)
                    cur.fetchall()

            raw()
            raw_s = timeit(raw, n)
        finally:
            raw_conn.close()
    finally:
        engine.dispose()
    return find_s, poll_s, raw_s, len(due_stmts)


def run(stack: BenchStack, repeat: int) -> dict[str, Any]:
    stack.set_repository(False)
    stack.restore_master()
    counts = _statement_counts(stack)
    find_s, poll_s, raw_s, due_statements = _poll(stack, repeat)
    fm, pm, rm = med(find_s) * 1000, med(poll_s) * 1000, med(raw_s) * 1000
    return {
        **counts,
        "find_due_requests_ms": [round(x * 1000, 2) for x in find_s],
        "find_due_requests_median_ms": round(fm, 2),
        "poll_median_ms": round(pm, 2),
        "raw_select_median_ms": round(rm, 2),
        "due_query_statements": due_statements,
        "ratio": ratio(fm, rm),
        "targets": {"read_reservation_statements": 3, "poll_ms": 50},
        "met": counts["read_reservation_statements"] <= 3 and pm <= 50,
    }
