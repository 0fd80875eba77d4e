"""How reservations end, on real vcl.sql data: the web's end/extend writes (devkit mirror of the PHP),
a load handing back a request the user deleted, a reclaim of a computer a dead load left
``reloading``, and the end time (``inuse.pm``'s timeout)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import computer_row, execute, loadlog_names, one, request_row
from worker.db.cancel import CancelOutcome, HandBack
from worker.db.requests import ClaimOutcome
from worker.db.seed import SeededSite, create_request
from worker.db.store import VclStore
from worker.devkit.web_writes import end_request, extend_request


def _req(
    sf: sessionmaker[Session], site: SeededSite, state: str = "new", *, start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[int, int]:  # fmt: skip
    return create_request(
        sf, computer_id=site.computer_ids[0], image_id=site.image_id, imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id, state=state, start=start, end=end,
    )  # fmt: skip


def _now(sf: sessionmaker[Session]) -> datetime:
    value = one(sf, "SELECT NOW() AS now")["now"]
    assert isinstance(value, datetime)
    return value


def _states(sf: sessionmaker[Session], request_id: int) -> tuple[str, str]:
    row = request_row(sf, request_id)
    return row["state"], row["laststate"]


@pytest.mark.parametrize(
    ("state", "laststate", "expected"),
    [("pending", "new", "reserved"), ("reserved", "new", "reserved"), ("inuse", "reserved", "inuse"),
     ("new", "new", "reserved")],
)  # fmt: skip
def test_end_request_writes_what_deleterequest_writes(
    sf: sessionmaker[Session], site: SeededSite, state: str, laststate: str, expected: str
) -> None:
    req, _res = _req(sf, site, start=_now(sf) - timedelta(minutes=5))
    execute(
        sf, "UPDATE request SET stateid = (SELECT id FROM state WHERE name = :s),"
        " laststateid = (SELECT id FROM state WHERE name = :l) WHERE id = :r", s=state, l=laststate, r=req,
    )  # fmt: skip
    assert end_request(sf, req) == "updated"
    assert _states(sf, req) == ("deleted", expected)
    log = one(sf, "SELECT l.ending, l.id FROM log l JOIN request r ON r.logid = l.id WHERE r.id = :r", r=req)
    assert log["ending"] == "released"
    assert one(sf, "SELECT COUNT(*) AS n FROM changelog WHERE logid = :l", l=log["id"])["n"] == 1


def test_end_request_before_the_start_deletes_the_rows(sf: sessionmaker[Session], site: SeededSite) -> None:
    req, res = _req(sf, site, start=_now(sf) + timedelta(hours=2))
    assert end_request(sf, req) == "deleted"
    assert one(sf, "SELECT COUNT(*) AS n FROM request WHERE id = :r", r=req)["n"] == 0
    assert one(sf, "SELECT COUNT(*) AS n FROM reservation WHERE id = :r", r=res)["n"] == 0


def _claimed_and_deleted(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite, *, started: bool
) -> tuple[int, int]:
    req, res = _req(sf, site, start=_now(sf) - timedelta(minutes=1))
    assert store.claim_for_task(req, res, "new", "task-a") is ClaimOutcome.CLAIMED
    if started:
        store.start_load(store.load_reservation(res))
        assert computer_row(sf, site.computer_ids[0])["state"] == "reloading"
    return req, res


@pytest.mark.parametrize(
    ("how", "computer", "outcome"),
    [(HandBack.LEAVE, "available", CancelOutcome.LEFT),
     (HandBack.RESTORE, "available", CancelOutcome.AVAILABLE),
     (HandBack.LOADED, "available", CancelOutcome.AVAILABLE),
     (HandBack.RELOAD, "reload", CancelOutcome.RELOAD)],
)  # fmt: skip
def test_a_load_hands_back_a_deleted_request(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite, how: HandBack, computer: str,
    outcome: CancelOutcome,
) -> None:  # fmt: skip
    cid = site.computer_ids[0]
    req, res = _claimed_and_deleted(sf, store, site, started=how is not HandBack.LEAVE)
    r = store.load_reservation(res)
    end_request(sf, req)
    assert _states(sf, req) == ("deleted", "reserved")
    assert store.hand_back(r, how, "cancelled") is outcome
    assert _states(sf, req) == ("complete", "deleted")
    assert computer_row(sf, cid)["state"] == computer
    assert loadlog_names(sf, res) == ["exited"]  # state_exit from deleted: all rows, then exited
    reloads = one(
        sf, "SELECT COUNT(*) AS n FROM request rq JOIN reservation rs ON rs.requestid = rq.id"
        " JOIN user u ON u.id = rq.userid"
        " WHERE rs.computerid = :c AND rq.id > :r AND u.unityid = 'vclreload'",
        c=cid, r=req,
    )["n"]  # fmt: skip
    assert reloads == (1 if how is HandBack.RELOAD else 0)
    # Exactly once: the dispatcher's reclaim (or a second hand-back) finds it complete.
    assert store.hand_back(r, how, "again") is CancelOutcome.LOST
    assert store.reclaim(req, res, "deleted").outcome == "lost"


def test_a_gone_request_hands_back_only_a_computer_still_reloading(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    cid = site.computer_ids[0]
    req, res = _claimed_and_deleted(sf, store, site, started=True)
    r = store.load_reservation(res)
    execute(sf, "DELETE FROM request WHERE id = :r", r=req)  # e.g. reclaimed and removed
    assert store.hand_back(r, HandBack.RELOAD, "gone") is CancelOutcome.RELOAD
    assert computer_row(sf, cid)["state"] == "reload"
    assert store.hand_back(r, HandBack.RELOAD, "gone") is CancelOutcome.LOST  # not reloading any more


def test_reclaim_gives_a_computer_left_reloading_a_fresh_disk(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    # The load task died after the cancel: the request is deleted, the computer still reloading.
    req, res = _claimed_and_deleted(sf, store, site, started=True)
    end_request(sf, req)
    got = store.reclaim(req, res, "deleted")
    assert got.outcome == "reload" and got.reload_request_id > 0
    assert _states(sf, req) == ("complete", "deleted")
    assert computer_row(sf, site.computer_ids[0])["state"] == "reload"
    assert _states(sf, got.reload_request_id) == ("reload", "reserved")


@pytest.mark.parametrize("state", ["reserved", "inuse"])
def test_time_out_at_the_end_time(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite, state: str
) -> None:
    cid = site.computer_ids[0]
    now = _now(sf)
    req, res = _req(sf, site, state, start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    execute(
        sf,
        "UPDATE computer SET stateid = (SELECT id FROM state WHERE name = 'reserved') WHERE id = :c",
        c=cid,
    )
    assert not store.time_out(req, res, state)  # not over yet
    assert [d.past_end for d in store.find_due_requests(site.management_node_id) if d.request_id == req] in (
        [], [False],
    )  # fmt: skip
    execute(sf, "UPDATE request SET end = NOW() - INTERVAL 1 MINUTE WHERE id = :r", r=req)
    (due,) = [d for d in store.find_due_requests(site.management_node_id) if d.request_id == req]
    assert due.past_end and due.state == state
    assert store.time_out(req, res, state)
    assert _states(sf, req) == ("timeout", state)
    assert computer_row(sf, cid)["state"] == "timeout"
    log = one(sf, "SELECT l.ending FROM log l JOIN request r ON r.logid = l.id WHERE r.id = :r", r=req)
    assert log["ending"] == "EOR"
    assert not store.time_out(req, res, state)  # once
    assert store.reclaim(req, res, "timeout").outcome == "reload"
    assert computer_row(sf, cid)["state"] == "reload"


def test_an_extension_keeps_the_reservation(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    now = _now(sf)
    req, res = _req(sf, site, "reserved", start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    new_end = extend_request(sf, req, 60)
    assert new_end > now + timedelta(minutes=45) and new_end.minute % 15 == 0
    assert not store.time_out(req, res, "reserved")
    assert _states(sf, req) == ("reserved", "reserved")
    assert not [
        d for d in store.find_due_requests(site.management_node_id) if d.request_id == req and d.past_end
    ]
