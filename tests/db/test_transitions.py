"""Each vcld transition on real vcl.sql data, with the rows asserted after every step."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import computer_row, execute, loadlog_names, one, request_row, rows, snapshot
from worker.db.errors import StateConflictError, VclDataError
from worker.db.requests import ClaimOutcome
from worker.db.seed import SeededSite, create_capture_request, create_request, create_tomaintenance_request
from worker.db.store import VclStore

PRELOAD = ["statuscheck", "loadimageblade", "info", "doesimageexists", "info"]


def _new(
    sf: sessionmaker[Session], site: SeededSite, state: str = "new", user: str = "admin"
) -> tuple[int, int]:
    return create_request(
        sf,
        computer_id=site.computer_ids[0],
        image_id=site.image_id,
        imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
        state=state,
        user=user,
    )


def test_new_to_reserved(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, res = _new(sf, site)
    cid = site.computer_ids[0]
    assert request_row(sf, req)["state"] == "new"
    store.insert_loadlog(res, cid, "begin")  # the dispatcher's fork marker, as bin/vcld
    assert store.claim_request(req, "new") is ClaimOutcome.CLAIMED
    assert store.request_states(req) == ("pending", "new")

    r = store.load_reservation(res)
    assert (r.request_state, r.request_laststate) == ("new", "new")
    assert r.imagerevision_imagename == site.imagename
    assert r.vmhost_short_name.startswith("kvmhost") and "." not in r.vmhost_short_name

    store.start_load(r)
    assert computer_row(sf, cid)["state"] == "reloading"
    assert loadlog_names(sf, res) == ["begin", *PRELOAD]
    info = [e.additionalinfo for e in store.loadlog(res) if e.loadstatename == "info"]
    assert info[0] == "computer state set to reloading"

    store.finish_load(r)
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("reserved", "new")
    comp = computer_row(sf, cid)
    assert comp["state"] == "reserved"
    assert (comp["currentimageid"], comp["imagerevisionid"]) == (site.image_id, site.imagerevision_id)
    # new: state_exit deletes only the begin rows
    assert loadlog_names(sf, res) == [*PRELOAD, "loadimagecomplete", "nodeready", "exited"]

    # redelivered task: finishing again is a no-op
    before = snapshot(sf)
    store.finish_load(r)
    assert snapshot(sf) == before


def test_reload_to_complete_then_removed(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = _new(sf, site, state="reload", user="vclreload")
    cid = site.computer_ids[0]
    assert store.claim_request(req, "reload") is ClaimOutcome.CLAIMED
    r = store.load_reservation(res)
    store.start_load(r)
    store.finish_load(r)
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"], rq["user"]) == ("complete", "reload", "vclreload")
    assert computer_row(sf, cid)["state"] == "available"
    assert loadlog_names(sf, res) == ["exited"]  # reload: all rows deleted, then exited

    due = {d.request_id: d for d in store.find_due_requests(site.management_node_id)}
    assert due[req].action == "remove"
    store.delete_request(req)
    assert rows(sf, "SELECT id FROM request WHERE id = :id", id=req) == []
    assert rows(sf, "SELECT id FROM reservation WHERE requestid = :id", id=req) == []
    assert loadlog_names(sf, res) == []


def test_load_failure_new(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, res = _new(sf, site)
    cid = site.computer_ids[0]
    store.insert_loadlog(res, cid, "begin")
    store.claim_request(req, "new")
    r = store.load_reservation(res)
    store.start_load(r)
    store.fail_load(r, "virsh start failed: boom")
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("failed", "new")
    assert computer_row(sf, cid)["state"] == "failed"
    log = one(sf, "SELECT ending, finalend FROM log WHERE id = :id", id=rq["logid"])
    assert log["ending"] == "failed"
    assert loadlog_names(sf, res) == [*PRELOAD, "loadimagefailed", "failed", "exited"]
    failed = [e for e in store.loadlog(res) if e.loadstatename == "failed"]
    assert failed[0].additionalinfo == "virsh start failed: boom"


def test_load_failure_reload(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    req, res = _new(sf, site, state="reload", user="vclreload")
    store.claim_request(req, "reload")
    r = store.load_reservation(res)
    store.start_load(r)
    store.fail_load(r, "no master image")
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("failed", "reload")
    assert computer_row(sf, site.computer_ids[0])["state"] == "failed"
    assert loadlog_names(sf, res) == ["exited"]


def test_capture_success(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    cid = site.computer_ids[0]
    req, res, rev = create_capture_request(
        sf, computer_id=cid, image_id=site.image_id, management_node_id=site.management_node_id
    )
    new_rev = one(sf, "SELECT * FROM imagerevision WHERE id = :id", id=rev)
    assert (new_rev["revision"], new_rev["deleted"], new_rev["production"]) == (1, 1, 0)
    assert new_rev["imagename"] == site.imagename[: -len("0")] + "1"
    assert one(sf, "SELECT test FROM image WHERE id = :id", id=site.image_id)["test"] == 1
    rq = request_row(sf, req)
    assert (rq["state"], rq["forimaging"]) == ("image", 1)

    assert store.claim_request(req, "image") is ClaimOutcome.CLAIMED
    r = store.load_reservation(res)  # deleted=1 revision is fine in state image
    assert (r.request_state, r.imagerevision_id) == ("image", rev)
    new_name = f"linux-CentOS7Base-{site.image_id}-v1"
    reload_req = store.finish_capture(r, new_name, 70000)

    ir = one(sf, "SELECT * FROM imagerevision WHERE id = :id", id=rev)
    assert (ir["imagename"], ir["deleted"]) == (new_name, 0)
    img = one(sf, "SELECT * FROM image WHERE id = :id", id=site.image_id)
    assert (img["name"], img["deleted"], img["size"]) == (new_name, 0, 65535)
    assert img["lastupdate"] is not None
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("complete", "image")
    assert one(sf, "SELECT ending FROM log WHERE id = :id", id=rq["logid"])["ending"] == "EOR"
    assert computer_row(sf, cid)["state"] == "reload"
    assert loadlog_names(sf, res) == ["exited"]

    nrq = request_row(sf, reload_req)
    assert (nrq["state"], nrq["laststate"], nrq["user"]) == ("reload", "image", "vclreload")
    assert nrq["end"] - nrq["start"] == timedelta(minutes=30)
    nres = one(sf, "SELECT * FROM reservation WHERE requestid = :id", id=reload_req)
    assert (nres["computerid"], nres["imageid"], nres["imagerevisionid"], nres["managementnodeid"]) == (
        cid,
        site.image_id,
        rev,
        site.management_node_id,
    )
    # the reload request is immediately due and loadable (revision no longer deleted)
    due = {d.request_id: d.action for d in store.find_due_requests(site.management_node_id)}
    assert due[reload_req] == "start"
    assert store.load_reservation(nres["id"]).imagerevision_imagename == new_name

    # redelivery: no-op, returns the reload request inserted the first time
    before = snapshot(sf)
    assert store.finish_capture(r, new_name, 70000) == reload_req
    assert snapshot(sf) == before


def test_capture_failure(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    cid = site.computer_ids[0]
    req, res, rev = create_capture_request(
        sf, computer_id=cid, image_id=site.image_id, management_node_id=site.management_node_id
    )
    store.claim_request(req, "image")
    r = store.load_reservation(res)
    store.fail_capture(r, "domain not found by MAC")
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("maintenance", "image")
    assert computer_row(sf, cid)["state"] == "maintenance"
    assert one(sf, "SELECT deleted FROM imagerevision WHERE id = :id", id=rev)["deleted"] == 1
    assert loadlog_names(sf, res) == ["exited"]
    # vcld never touches a maintenance request again
    assert req not in {d.request_id for d in store.find_due_requests(site.management_node_id)}


def test_tomaintenance(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    cid = site.computer_ids[1]
    req, res = create_tomaintenance_request(sf, computer_id=cid, management_node_id=site.management_node_id)
    assert request_row(sf, req)["user"] == "vclreload"
    due = {d.request_id: d.action for d in store.find_due_requests(site.management_node_id)}
    assert due[req] == "start"
    assert store.claim_request(req, "tomaintenance") is ClaimOutcome.CLAIMED
    r = store.load_reservation(res)
    assert r.image_name == "noimage"
    store.finish_maintenance(r)
    comp = computer_row(sf, cid)
    assert comp["state"] == "maintenance"
    assert comp["vmhostid"] is None
    assert (comp["currentimageid"], comp["imagerevisionid"]) == (1, 1)
    rq = request_row(sf, req)
    assert (rq["state"], rq["laststate"]) == ("complete", "tomaintenance")
    assert loadlog_names(sf, res) == ["exited"]
    due = {d.request_id: d.action for d in store.find_due_requests(site.management_node_id)}
    assert due[req] == "remove"


def test_finish_without_claim_conflicts_and_changes_nothing(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res = _new(sf, site)
    store.claim_request(req, "new")
    r = store.load_reservation(res)
    execute(
        sf,
        "UPDATE request SET stateid = (SELECT id FROM state WHERE name = 'deleted') WHERE id = :id",
        id=req,
    )
    before = snapshot(sf)
    with pytest.raises(StateConflictError, match=rf"request {req} is deleted/new, expected pending/new"):
        store.finish_load(r)
    with pytest.raises(StateConflictError, match=str(req)):
        store.start_load(r)
    with pytest.raises(StateConflictError, match=str(req)):
        store.fail_load(r, "x")
    assert snapshot(sf) == before


def test_capture_rename_collision_rolls_back(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, res, _rev = create_capture_request(
        sf,
        computer_id=site.computer_ids[0],
        image_id=site.image_id,
        management_node_id=site.management_node_id,
    )
    store.claim_request(req, "image")
    r = store.load_reservation(res)
    before = snapshot(sf)
    with pytest.raises(VclDataError, match=rf"image {site.image_id} cannot be renamed to 'noimage'"):
        store.finish_capture(r, "noimage", 10)  # image.name is UNIQUE and 'noimage' exists
    assert snapshot(sf) == before
    assert store.request_states(req) == ("pending", "image")


def test_update_lastcheckin(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    assert store.update_lastcheckin(site.management_node_id) == 12
    mn = one(sf, "SELECT lastcheckin FROM managementnode WHERE id = :id", id=site.management_node_id)
    assert mn["lastcheckin"] is not None
    with pytest.raises(VclDataError, match="managementnode 999999"):
        store.update_lastcheckin(999999)


def test_loadlog_unknown_state(store: VclStore, site: SeededSite, sf: sessionmaker[Session]) -> None:
    _req, res = _new(sf, site)
    with pytest.raises(VclDataError, match="'nosuchstate'"):
        store.insert_loadlog(res, site.computer_ids[0], "nosuchstate")
