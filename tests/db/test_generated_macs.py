"""The VCL columns behind issue 19's domain XML, read and written on real vcl.sql data:
``vmprofile.eth0generated``/``eth1generated``, ``image.project`` and ``image.minprocnumber`` reach
the core's :class:`Reservation`, and the MACs a load generated are recorded on the computer row
(``computer.eth0macaddress``/``eth1macaddress``), where capture and the power calls look for them."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.db.conftest import unique_spec
from tests.db.helpers import computer_row, execute
from worker.db.seed import create_request, seed_site
from worker.db.store import VclStore


def test_generated_macs_are_recorded_and_read_back(sf: sessionmaker[Session], store: VclStore) -> None:
    site = seed_site(sf, unique_spec(eth0_generated=True, eth1_generated=True))
    cid, other = site.computer_ids
    execute(sf, "UPDATE image SET project = 'vclhpc', minprocnumber = 4 WHERE id = :id", id=site.image_id)
    _req, res = create_request(
        sf,
        computer_id=cid,
        image_id=site.image_id,
        imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
    )
    r = store.load_reservation(res)
    assert (r.vmprofile.eth0_generated, r.vmprofile.eth1_generated) == (True, True)
    assert (r.image_project, r.image_minprocnumber) == ("vclhpc", 4)
    before = computer_row(sf, cid)

    eth0, eth1 = "52:54:00:9a:00:01", "52:54:00:9a:00:02"
    written = store.record_generated_macs(r, eth0, eth1)
    assert written == {"eth0macaddress": eth0, "eth1macaddress": eth1}
    row = computer_row(sf, cid)
    assert (row["eth0macaddress"], row["eth1macaddress"]) == (eth0, eth1)
    assert (row["eth0macaddress"], row["eth1macaddress"]) != (
        before["eth0macaddress"],
        before["eth1macaddress"],
    )
    assert row["stateid"] == before["stateid"]  # only the MACs change
    # The next task's reservation (a capture's) carries them: it finds the domain by these MACs.
    again = store.load_reservation(res)
    assert (again.eth0_mac, again.eth1_mac) == (eth0, eth1)

    # Only eth1 generated: eth0 stays the row's.
    assert store.record_generated_macs(again, None, "52:54:00:9a:00:03") == {
        "eth1macaddress": "52:54:00:9a:00:03"
    }
    row = computer_row(sf, cid)
    assert (row["eth0macaddress"], row["eth1macaddress"]) == (eth0, "52:54:00:9a:00:03")

    # A MAC another live computer holds (UNIQUE with datedeleted) is not written; the other one is.
    taken = computer_row(sf, other)["eth0macaddress"]
    assert store.record_generated_macs(again, taken, "52:54:00:9a:00:04") == {
        "eth1macaddress": "52:54:00:9a:00:04"
    }
    row = computer_row(sf, cid)
    assert (row["eth0macaddress"], row["eth1macaddress"]) == (eth0, "52:54:00:9a:00:04")
    assert computer_row(sf, other)["eth0macaddress"] == taken
