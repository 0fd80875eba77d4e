"""Claiming (guarded UPDATE), concurrent claims, and the statement budget of load_reservation."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import execute, new_request, one, rows
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


def test_connect_methods_follow_vclds_overrides(sf: sessionmaker[Session], store: VclStore) -> None:
    """vcld's rule for ``connectmethodmap``: a revision's row overrides its OS's, an OS's row its OS
    type's, ``disabled`` wins a tie, and ``autoprovisioned`` rows are not the image's methods."""
    from tests.db.conftest import unique_spec
    from worker.db.seed import seed_site

    site = seed_site(sf, unique_spec())
    _, res = new_request(sf, site)
    os_id = one(sf, "SELECT OSid FROM image WHERE id = :i", i=site.image_id)["OSid"]
    ids = {r["name"]: r["id"] for r in rows(sf, "SELECT id, name FROM connectmethod")}
    ssh, rdp = ids["SSH"], ids["RDP"]

    def rev_row(method: int, disabled: int) -> None:
        execute(sf, "INSERT INTO connectmethodmap (connectmethodid, imagerevisionid, disabled) "
                "VALUES (:m, :r, :d)", m=method, r=site.imagerevision_id, d=disabled)  # fmt: skip

    assert store.load_reservation(res).connect_ports == (22,)  # the OS type's SSH
    rev_row(rdp, 0)  # the revision adds RDP
    assert store.load_reservation(res).connect_ports == (22, 3389)
    rev_row(ssh, 1)  # ... and disables the OS type's SSH: only RDP is left to prove readiness
    r = store.load_reservation(res)
    assert r.connect_ports == (3389,) and r.readiness_port == 3389
    execute(sf, "DELETE FROM connectmethodmap WHERE imagerevisionid = :r", r=site.imagerevision_id)
    # An OS row disabling SSH overrides the OS type's row; an autoprovisioned row counts for nothing.
    for method, disabled in ((ssh, 1), (rdp, 0)):
        execute(sf, "INSERT INTO connectmethodmap (connectmethodid, OSid, disabled) VALUES (:m, :o, :d)",
                m=method, o=os_id, d=disabled)  # fmt: skip
    execute(sf, "INSERT INTO connectmethodmap (connectmethodid, imagerevisionid, disabled, autoprovisioned) "
            "VALUES (:m, :r, 0, 1)", m=ssh, r=site.imagerevision_id)  # fmt: skip
    assert store.load_reservation(res).connect_ports == (3389,)
    rev_row(ssh, 0)  # the revision turns it back on
    assert store.load_reservation(res).connect_ports == (22, 3389)
    execute(sf, "DELETE FROM connectmethodmap WHERE OSid = :o OR imagerevisionid = :r",
            o=os_id, r=site.imagerevision_id)  # fmt: skip
