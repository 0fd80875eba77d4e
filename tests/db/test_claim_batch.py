"""A dispatcher pass's claims in one go (worker/db/claim_batch.py), on MariaDB: the same rows and
guards as single claims, requests that changed state or are locked by another claimer left out, and
two dispatchers racing over the same requests claim each exactly once."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import execute, new_request, request_row
from worker.db.claim_batch import ClaimWish
from worker.db.seed import SeededSite
from worker.db.store import VclStore


def _wishes(sf: sessionmaker[Session], site: SeededSite, n: int, state: str = "new") -> list[ClaimWish]:
    out = []
    for i in range(n):
        req, res = new_request(sf, site, computer=i % 2, state=state)
        out.append(ClaimWish(req, res, site.computer_ids[i % 2], state, str(uuid.uuid4())))
    return out


def _state(sf: sessionmaker[Session], request_id: int) -> tuple[str, str]:
    row = request_row(sf, request_id)
    return row["state"], row["laststate"]


def test_claim_many_claims_marks_sent_and_gives_back(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    wishes = _wishes(sf, site, 6) + _wishes(sf, site, 2, state="reload")
    # One request moved on before the pass claimed it (the web deleted it): it must be left alone.
    execute(sf, "UPDATE request SET stateid=(SELECT id FROM state WHERE name='deleted') WHERE id=:i",
            i=wishes[0].request_id)  # fmt: skip
    claimed = store.claim_many(wishes)
    assert [c.request_id for c in claimed] == [w.request_id for w in wishes[1:]]
    assert _state(sf, wishes[0].request_id) == ("deleted", "new")
    for c in claimed:
        assert _state(sf, c.request_id) == ("pending", c.from_state)
        assert store.owns_claim(c.reservation_id, c.task_id)
    by_res = {p.reservation_id: p for p in store.pending_claims(site.management_node_id)}
    assert set(by_res) == {c.reservation_id for c in claimed}
    assert all(not by_res[c.reservation_id].record.sent for c in claimed)
    assert all(by_res[c.reservation_id].record.task_id == c.task_id for c in claimed)

    assert store.mark_many_sent(claimed[:4]) == 4
    assert store.mark_many_sent(claimed[:4]) == 0  # already sent: the guard matches nothing
    by_res = {p.reservation_id: p for p in store.pending_claims(site.management_node_id)}
    assert [by_res[c.reservation_id].record.sent for c in claimed] == [True] * 4 + [False] * 3

    # The tasks of the last three were never published: their requests go back, rows and all.
    store.drop_many(claimed[4:])
    for c in claimed[4:]:
        assert _state(sf, c.request_id) == (c.from_state, c.from_state)
    assert {p.reservation_id for p in store.pending_claims(site.management_node_id)} == {
        c.reservation_id for c in claimed[:4]
    }


def test_a_request_locked_by_another_claimer_is_skipped(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    wishes = _wishes(sf, site, 3)
    with sf() as other:
        # Another dispatcher's claim transaction holds the middle request's row lock.
        other.execute(text("SELECT id FROM request WHERE id=:i FOR UPDATE"), {"i": wishes[1].request_id})
        claimed = store.claim_many(wishes)
        other.rollback()
    assert [c.request_id for c in claimed] == [wishes[0].request_id, wishes[2].request_id]
    assert _state(sf, wishes[1].request_id) == ("new", "new")


def test_two_dispatchers_racing_claim_each_request_once(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    wishes = _wishes(sf, site, 40)
    other_store = VclStore(sf)
    results: dict[str, list[ClaimWish]] = {}
    start = threading.Barrier(2)

    def run(name: str, s: VclStore, ws: list[ClaimWish]) -> None:
        start.wait()
        results[name] = s.claim_many(ws)

    # Same requests, each dispatcher with its own task ids and in opposite order.
    theirs = [ClaimWish(w.request_id, w.reservation_id, w.computer_id, w.from_state, str(uuid.uuid4()))
              for w in reversed(wishes)]  # fmt: skip
    threads = [threading.Thread(target=run, args=("a", store, wishes)),
               threading.Thread(target=run, args=("b", other_store, theirs))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won_a = {c.request_id for c in results["a"]}
    won_b = {c.request_id for c in results["b"]}
    assert not won_a & won_b
    assert won_a | won_b == {w.request_id for w in wishes}
    # Each request's one claim row names the task of the dispatcher that won it.
    task_of = {c.reservation_id: c.task_id for c in results["a"] + results["b"]}
    pending = store.pending_claims(site.management_node_id)
    assert {p.reservation_id: p.record.task_id for p in pending} == task_of
