"""Claims tied to a task id, the sweep's view of them, stranded failures and reclaim (MariaDB)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import computer_row, loadlog_names, request_row
from worker.db.requests import ClaimOutcome
from worker.db.seed import SeededSite, create_request
from worker.db.store import VclStore


def _req(
    sf: sessionmaker[Session], site: SeededSite, state: str = "new", laststate: str | None = None
) -> tuple[int, int]:
    return create_request(
        sf, computer_id=site.computer_ids[0], image_id=site.image_id, imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id, state=state, laststate=laststate,
    )  # fmt: skip


def test_claim_names_its_task_and_the_sweep_hands_it_over_once(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = _req(sf, site)
    assert store.claim_for_task(req, res, "new", "task-a", sent=False) is ClaimOutcome.CLAIMED
    assert store.claim_for_task(req, res, "new", "task-a") is ClaimOutcome.RESUMED  # its own delivery
    assert store.claim_for_task(req, res, "new", "task-b") is ClaimOutcome.LOST  # another task's claim
    (claim,) = store.pending_claims(site.management_node_id)
    assert (claim.request_id, claim.claimed_from, claim.record.task_id, claim.record.sent) == (
        req, "new", "task-a", False,
    )  # fmt: skip
    assert store.retarget_claim(res, claim.record, "task-c")
    assert not store.retarget_claim(res, claim.record, "task-d")  # the row changed: one winner
    assert not store.owns_claim(res, "task-a") and store.owns_claim(res, "task-c")
    assert store.mark_claim_sent(res, "task-c")
    (claim,) = store.pending_claims(site.management_node_id)
    assert (claim.record.task_id, claim.record.sent, claim.record.requeued) == ("task-c", True, 1)
    # A superseded task never fails its successor's claim; the current one does, vcld's way.
    assert not store.fail_stranded(res, "task-a", "old task")
    assert store.fail_stranded(res, "task-c", "hard time limit")
    assert (request_row(sf, req)["state"], request_row(sf, req)["laststate"]) == ("failed", "new")
    assert computer_row(sf, site.computer_ids[0])["state"] == "failed"
    assert loadlog_names(sf, res)[-2:] == ["failed", "exited"] and "begin" not in loadlog_names(sf, res)
    assert not store.fail_stranded(res, None, "again")  # not pending any more
    assert store.pending_claims(site.management_node_id) == []


def test_drop_claim_gives_the_request_back(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = _req(sf, site)
    store.claim_for_task(req, res, "new", "task-a", sent=False)
    assert store.drop_claim(req, res, "new")
    assert store.request_states(req) == ("new", "new") and "begin" not in loadlog_names(sf, res)


def test_reclaim_outcomes(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, res = _req(sf, site, "deleted", "inuse")
    got = store.reclaim(req, res, "deleted")
    assert got.outcome == "reload" and got.reload_request_id > 0
    assert store.request_states(req) == ("complete", "deleted")
    assert computer_row(sf, site.computer_ids[0])["state"] == "reload"
    new = request_row(sf, got.reload_request_id)
    assert (new["state"], new["laststate"], new["user"]) == ("reload", "inuse", "vclreload")
    assert store.reclaim(req, res, "deleted").outcome == "lost"  # exactly once
    req2, res2 = _req(sf, site, "timeout", "new")
    assert store.reclaim(req2, res2, "timeout").outcome == "left"  # the computer is already in reload
    assert store.request_states(req2) == ("complete", "timeout")
