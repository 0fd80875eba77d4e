"""The dispatcher's undo (drop_claim), failing an unloadable reservation, and the check-in interval:
every request change guarded by the state the caller expects."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import computer_row, execute, loadlog_names, new_request, request_row, snapshot
from worker.db.requests import ClaimOutcome
from worker.db.seed import SeededSite, create_capture_request
from worker.db.store import VclStore


def test_unclaim_only_undoes_its_own_claim(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = new_request(sf, site)
    assert store.drop_claim(req, res, "new") is False  # not claimed: nothing to undo
    assert store.claim_request(req, "new") is ClaimOutcome.CLAIMED
    assert store.drop_claim(req, res, "reload") is False  # claimed from another state
    assert store.request_states(req) == ("pending", "new")
    assert store.drop_claim(req, res, "new") is True
    assert store.request_states(req) == ("new", "new")
    assert store.drop_claim(987654, 987654, "new") is False


def test_fail_request_load_state(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, res = new_request(sf, site)
    cid = site.computer_ids[0]
    before = snapshot(sf)
    store.fail_request(req, res, "unclaimed: nothing happens")
    assert snapshot(sf) == before
    store.claim_request(req, "new")
    store.fail_request(req, res, "x" * 5000)
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("failed", "new")
    assert computer_row(sf, cid)["state"] == "failed"
    assert loadlog_names(sf, res) == ["failed"]
    entry = store.loadlog(res)[0]
    assert entry.additionalinfo == "x" * 4000
    before = snapshot(sf)
    store.fail_request(req, res, "redelivered: already failed")
    assert snapshot(sf) == before


def test_fail_request_capture_goes_to_maintenance(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    cid = site.computer_ids[1]
    req, res, _rev = create_capture_request(
        sf, computer_id=cid, image_id=site.image_id, management_node_id=site.management_node_id
    )
    store.claim_request(req, "image")
    store.fail_request(req, res, "no vmhost")
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("maintenance", "image")
    assert computer_row(sf, cid)["state"] == "maintenance"


def test_fail_request_leaves_a_maintenance_computer_alone(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = new_request(sf, site)
    cid = site.computer_ids[0]
    store.claim_request(req, "new")
    execute(sf, "UPDATE computer SET stateid = 10 WHERE id = :id", id=cid)
    store.fail_request(req, res, "bad data")
    assert request_row(sf, req)["state"] == "failed"
    assert computer_row(sf, cid)["state"] == "maintenance"


def test_checkin_interval(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    mn = site.management_node_id
    assert store.checkin_interval(mn) == 12
    execute(sf, "UPDATE managementnode SET checkininterval = 5 WHERE id = :id", id=mn)
    assert store.checkin_interval(mn) == 5
    assert store.checkin_interval(999999) == 12  # vcld's default
