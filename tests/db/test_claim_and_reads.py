"""Claiming (guarded UPDATE), concurrent claims, and the statement budget of load_reservation."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import execute, new_request
from worker.db.engine import make_engine, make_session_factory
from worker.db.requests import ClaimOutcome
from worker.db.seed import SeededSite
from worker.db.store import VclStore
from worker.devkit.sqlcount import counting_statements


def test_claim_outcomes(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, _ = new_request(sf, site)
    assert store.claim_request(req, "reload") is ClaimOutcome.LOST  # wrong from-state
    assert store.request_states(req) == ("new", "new")
    assert store.claim_request(req, "new") is ClaimOutcome.CLAIMED
    assert store.request_states(req) == ("pending", "new")
    assert store.claim_request(req, "new") is ClaimOutcome.RESUMED  # redelivered task
    assert store.claim_request(req, "reload") is ClaimOutcome.LOST
    assert store.claim_request(987654, "new") is ClaimOutcome.LOST
    assert store.request_states(987654) is None


def test_maintenance_request_is_never_claimed(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, _ = new_request(sf, site)
    # a failed capture left it in maintenance/image: nothing may claim it from a load state
    execute(sf, "UPDATE request SET stateid = 10, laststateid = 16 WHERE id = :id", id=req)
    assert store.claim_request(req, "new") is ClaimOutcome.LOST
    assert store.request_states(req) == ("maintenance", "image")


@pytest.mark.parametrize("attempt", range(5))
def test_two_concurrent_claims_exactly_one_claimed(
    vcl_db_url: str, sf: sessionmaker[Session], site: SeededSite, attempt: int
) -> None:
    req, _ = new_request(sf, site)
    engines = [make_engine(vcl_db_url) for _ in range(2)]
    stores = [VclStore(make_session_factory(e)) for e in engines]
    barrier = threading.Barrier(2)
    results: list[ClaimOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(st: VclStore) -> None:
        try:
            st.request_states(req)  # warm up connection + state cache outside the race
            barrier.wait()
            out = st.claim_request(req, "new")
            with lock:
                results.append(out)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(st,)) for st in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for e in engines:
        e.dispose()
    assert errors == []
    assert sorted(r.value for r in results).count("claimed") == 1
    # The loser sees the request pending/new: at the database level that is indistinguishable from
    # a redelivered task (RESUMED); the per-computer lock of the task layer serialises them.
    assert {r for r in results if r is not ClaimOutcome.CLAIMED} <= {ClaimOutcome.RESUMED, ClaimOutcome.LOST}


def test_load_reservation_statement_count(
    engine: Engine, sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = new_request(sf, site)
    store.claim_request(req, "new")
    with counting_statements(engine) as statements:
        r = store.load_reservation(res)
    assert r.reservation_id == res
    assert len(statements) <= 3, statements
    assert len(statements) == 1


def test_reservation_carries_how_vcl_reaches_the_guest(
    engine: Engine, sf: sessionmaker[Session], store: VclStore
) -> None:
    """privateIPaddress, image.reloadtime, the connect-method ports of the image's OS type (vcl.sql's
    SSH for linux) and managementnode.keys, still in one SELECT."""
    from tests.db.conftest import unique_spec
    from worker.db.seed import seed_site

    site = seed_site(sf, unique_spec(management_node_keys="/etc/vcl/a.key, /etc/vcl/b.key"))
    _, res = new_request(sf, site)
    with counting_statements(engine) as statements:
        r = store.load_reservation(res)
    assert len(statements) == 1
    assert r.computer_private_ip is not None and r.computer_private_ip.count(".") == 3
    assert r.image_reloadtime_minutes == 10  # vcl.sql's default
    assert r.connect_ports == (22,) and r.readiness_port == 22
    assert r.management_node_keys == ("/etc/vcl/a.key", "/etc/vcl/b.key")
    # A Windows-type OS maps to RDP in vcl.sql: the same query finds 3389.
    with sf.begin() as s:
        s.execute(
            text("UPDATE image SET OSid = (SELECT id FROM OS WHERE type = 'windows' LIMIT 1) WHERE id = :i"),
            {"i": site.image_id},
        )
    assert store.load_reservation(res).connect_ports == (3389,)
