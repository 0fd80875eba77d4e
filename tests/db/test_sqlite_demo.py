"""The embedded demo: create_demo_schema + seed_site + load/capture cycles on SQLite."""

from __future__ import annotations

from pathlib import Path

from worker.db.engine import make_engine, make_session_factory
from worker.db.requests import ClaimOutcome
from worker.db.seed import SiteSpec, create_capture_request, create_demo_schema, create_request, seed_site
from worker.db.store import VclStore


def test_sqlite_demo_cycle(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'vcl.db'}")
    create_demo_schema(engine)
    create_demo_schema(engine)  # idempotent
    sf = make_session_factory(engine)
    store = VclStore(sf)
    site = seed_site(sf, SiteSpec(vm_hostnames=("vm1.example.org", "vm2.example.org")))
    assert site.imagename == f"vmwarelinux-CentOS7Base{site.image_id}-v0"
    cid = site.computer_ids[0]

    req, res = create_request(
        sf, computer_id=cid, image_id=site.image_id, imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
    )  # fmt: skip
    assert [d.action for d in store.find_due_requests(site.management_node_id)] == ["start"]
    assert store.claim_request(req, "new") is ClaimOutcome.CLAIMED
    r = store.load_reservation(res)
    assert r.vmprofile.datastore_imagetype == "qcow2" and r.vmhost_short_name == "kvmhost1"
    store.start_load(r)
    assert store.computer_state(cid) == "reloading"
    store.finish_load(r)
    assert store.request_states(req) == ("reserved", "new")
    assert store.computer_state(cid) == "reserved"
    assert [e.loadstatename for e in store.loadlog(res)][-3:] == ["loadimagecomplete", "nodeready", "exited"]

    creq, cres, rev = create_capture_request(
        sf, computer_id=cid, image_id=site.image_id, management_node_id=site.management_node_id
    )
    assert store.claim_request(creq, "image") is ClaimOutcome.CLAIMED
    cr = store.load_reservation(cres)
    reload_req = store.finish_capture(cr, f"linux-CentOS7Base-{site.image_id}-v1", 1234)
    assert store.request_states(creq) == ("complete", "image")
    assert store.request_states(reload_req) == ("reload", "image")
    assert store.computer_state(cid) == "reload"

    due = {d.request_id: d for d in store.find_due_requests(site.management_node_id)}
    assert due[reload_req].action == "start"
    assert store.claim_request(reload_req, "reload") is ClaimOutcome.CLAIMED
    rr = store.load_reservation(due[reload_req].reservation_id)
    assert rr.imagerevision_id == rev and rr.imagerevision_imagename.endswith("-v1")
    store.start_load(rr)
    store.finish_load(rr)
    assert store.request_states(reload_req) == ("complete", "reload")
    assert store.computer_state(cid) == "available"
    removed = {d.request_id for d in store.find_due_requests(site.management_node_id) if d.action == "remove"}
    assert {creq, reload_req} <= removed
    store.delete_request(reload_req)
    assert store.request_states(reload_req) is None
    engine.dispose()
