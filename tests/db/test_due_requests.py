"""find_due_requests = vcld's get_management_node_requests + check_time, and its speed."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tests.db.conftest import unique_spec
from tests.db.helpers import execute
from worker.db.schedule import check_time
from worker.db.seed import SeededSite, create_request, seed_site
from worker.db.store import VclStore
from worker.devkit.site import seed_poll_requests
from worker.devkit.sqlcount import counting_statements, statement_kinds


def _now(sf: sessionmaker[Session]) -> datetime:
    with sf() as s:
        value = s.execute(text("SELECT NOW()")).scalar_one()
    assert isinstance(value, datetime)
    return value


def test_check_time_rules() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0)
    assert check_time("new", "new", now, now + timedelta(hours=1), now) == "start"
    assert check_time("new", "new", now - timedelta(minutes=5), None, now) == "start"
    assert check_time("reload", "reload", now + timedelta(minutes=30), None, now) == "preload"
    assert check_time("new", "new", now + timedelta(minutes=25), None, now) == "preload"
    assert check_time("new", "new", now + timedelta(minutes=35), None, now) == "preload"
    assert check_time("new", "new", now + timedelta(minutes=36), None, now) is None
    assert check_time("new", "new", now + timedelta(minutes=10), None, now) is None
    assert check_time("tomaintenance", "tomaintenance", now + timedelta(minutes=1), None, now) is None
    assert check_time("tomaintenance", "tomaintenance", now, None, now) == "start"
    assert check_time("complete", "reload", now, now + timedelta(hours=1), now) == "remove"
    assert check_time("failed", "imageprep", now, now + timedelta(hours=1), now) == "remove"
    assert check_time("complete", "inuse", now, now + timedelta(hours=1), now) is None
    assert check_time("complete", "inuse", now, now - timedelta(minutes=1), now) == "remove"
    assert check_time("inuse", "reserved", now, now + timedelta(minutes=9), now) == "end"
    assert check_time("inuse", "reserved", now, now + timedelta(hours=1), now, lastcheck=now) is None
    assert (
        check_time(
            "inuse", "reserved", now, now + timedelta(hours=1), now, lastcheck=now - timedelta(minutes=6)
        )
        == "poll"
    )
    assert check_time("image", "inuse", now, now + timedelta(hours=1), now) == "start"
    assert check_time("timeout", "inuse", now, now, now) == "start"


def test_due_requests_scenarios(sf: sessionmaker[Session], store: VclStore, site: SeededSite) -> None:
    other = seed_site(sf, unique_spec())
    now = _now(sf)
    c1, c2 = site.computer_ids

    def mk(
        state: str,
        start: datetime,
        *,
        laststate: str | None = None,
        computer: int = c1,
        s: SeededSite = site,
        end: datetime | None = None,
    ) -> int:
        req, _ = create_request(
            sf, computer_id=computer if s is site else s.computer_ids[0], image_id=s.image_id,
            imagerevision_id=s.imagerevision_id, management_node_id=s.management_node_id, state=state,
            laststate=laststate, start=start, end=end,
        )  # fmt: skip
        return req

    start_now = mk("new", now)
    preload = mk("reload", now + timedelta(minutes=30), computer=c2)
    preload_done = mk("new", now + timedelta(minutes=30))
    execute(sf, "UPDATE request SET preload = 1 WHERE id = :id", id=preload_done)
    later = mk("new", now + timedelta(hours=2))
    pending = mk("pending", now, laststate="new")
    maintenance = mk("maintenance", now, laststate="image")
    removable = mk("complete", now - timedelta(hours=1), laststate="reload")
    not_yet = mk("complete", now - timedelta(hours=1), laststate="inuse", end=now + timedelta(hours=1))
    ended = mk("failed", now - timedelta(hours=2), laststate="new", end=now - timedelta(hours=1))
    foreign = mk("new", now, s=other)

    due = store.find_due_requests(site.management_node_id)
    by_req = {d.request_id: d for d in due}
    assert by_req[start_now].action == "start"
    assert by_req[preload].action == "preload"
    assert by_req[removable].action == "remove"
    assert by_req[ended].action == "remove"
    for absent in (preload_done, later, pending, maintenance, not_yet, foreign):
        assert absent not in by_req
    assert [d.reservation_id for d in due] == sorted(d.reservation_id for d in due)
    d = by_req[start_now]
    assert (d.state, d.laststate, d.computer_id) == ("new", "new", c1)
    assert d.vmhost_short_name is not None and d.vmhost_short_name.startswith("kvmhost")
    assert d.start == now
    # an explicit clock gives the same answer as the database's NOW()
    assert {x.request_id for x in store.find_due_requests(site.management_node_id, now=now)} == set(by_req)
    # two hours later the 'later' request is due too
    later_due = {
        x.request_id: x.action
        for x in store.find_due_requests(site.management_node_id, now=now + timedelta(hours=2))
    }
    assert later_due[later] == "start"
    assert {x.request_id for x in store.find_due_requests(other.management_node_id)} == {foreign}


def test_find_due_requests_among_10000_others(sf: sessionmaker[Session], store: VclStore) -> None:
    """10,000 reservations vcld has nothing to do with (future reservations, finished requests that
    are not removable yet, inuse requests checked recently) + 100 due ones, one management node: the
    100 and only they, in one SELECT whatever the number of rows. How fast is benchmark B5's (the
    poll's target lives there, measured against a raw cursor in the same run, not in a timed test)."""
    site = seed_site(sf, unique_spec(vm_hostnames=tuple(f"bench{i}.example.org" for i in range(1))))
    seed_poll_requests(sf, site)
    store.find_due_requests(site.management_node_id)  # warm up (state cache, connection)
    engine = sf.kw["bind"]
    with counting_statements(engine) as statements:
        due = store.find_due_requests(site.management_node_id)
    assert len(due) == 100 and {d.action for d in due} == {"start"}
    assert statement_kinds(statements) == {"SELECT": 1}, statements
