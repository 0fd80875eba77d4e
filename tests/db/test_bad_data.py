# ruff: noqa: E501
"""Bad data gives the specific error with a message naming the bad value, and changes no row."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tests.db.helpers import execute, snapshot
from worker.db.errors import (
    ImageRevisionError,
    NotLibvirtProvisionedError,
    NoVMHostError,
    NoVMProfileError,
    ReservationNotFoundError,
    VclDataError,
)
from worker.db.seed import SeededSite, create_request
from worker.db.store import VclStore


def _unchecked(sf: sessionmaker[Session], sql: str, **params: object) -> None:
    """Run ``sql`` with foreign-key checks off (to create data the FKs would refuse)."""
    with sf.begin() as s:
        s.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        s.execute(text(sql), params)
        s.execute(text("SET FOREIGN_KEY_CHECKS = 1"))


Breaker = Callable[[sessionmaker[Session], SeededSite, int, int], None]

CASES: list[tuple[str, Breaker, type[VclDataError], str]] = [
    (
        "null vmhostid",
        lambda sf, site, req, res: execute(sf, "UPDATE computer SET vmhostid = NULL WHERE id = :c", c=site.computer_ids[0]),
        NoVMHostError,
        r"computer \d+ \(vm\d+a\.example\.org\) has no VM host \(computer\.vmhostid is NULL\)",
    ),
    (
        "wrong provisioning module",
        lambda sf, site, req, res: execute(sf, "UPDATE computer SET provisioningid = 7 WHERE id = :c", c=site.computer_ids[0]),
        NotLibvirtProvisionedError,
        r"provisioning id 7 \('vmware', module 'VCL::Module::Provisioning::VMware::VMware'\)",
    ),
    (
        "deleted revision outside image state",
        lambda sf, site, req, res: execute(sf, "UPDATE imagerevision SET deleted = 1 WHERE id = :r", r=site.imagerevision_id),
        ImageRevisionError,
        r"imagerevision \d+ \('vmwarelinux-CentOS7Base.*-v0'\) is deleted and the request state is 'new'",
    ),
    (
        "missing imagerevision row",
        lambda sf, site, req, res: _unchecked(sf, "UPDATE reservation SET imagerevisionid = 888888 WHERE id = :r", r=res),
        ImageRevisionError,
        r"imagerevision 888888 not found",
    ),
    (
        "revision of another image",
        lambda sf, site, req, res: execute(sf, "UPDATE reservation SET imagerevisionid = 1 WHERE id = :r", r=res),
        ImageRevisionError,
        r"imagerevision 1 belongs to image 1, not to the reservation's image \d+",
    ),
    (
        "missing vmhost row",
        lambda sf, site, req, res: _unchecked(sf, "UPDATE computer SET vmhostid = 7777 WHERE id = :c", c=site.computer_ids[0]),
        NoVMHostError,
        r"refers to vmhost 7777, which does not exist",
    ),
    (
        "missing vmprofile row",
        lambda sf, site, req, res: _unchecked(sf, "UPDATE vmhost SET vmprofileid = 6666 WHERE id = :v", v=site.vmhost_id),
        NoVMProfileError,
        r"vmhost \d+ refers to vmprofile 6666, which does not exist",
    ),
    (
        "missing computer row",
        lambda sf, site, req, res: _unchecked(sf, "UPDATE reservation SET computerid = 5555 WHERE id = :r", r=res),
        VclDataError,
        r"computer 5555 not found",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("breaker", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_is_reported_and_changes_nothing(
    sf: sessionmaker[Session],
    store: VclStore,
    site: SeededSite,
    breaker: Breaker,
    error: type[VclDataError],
    pattern: str,
) -> None:
    req, res = create_request(
        sf,
        computer_id=site.computer_ids[0],
        image_id=site.image_id,
        imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
    )
    assert store.claim_request(req, "new").value == "claimed"
    breaker(sf, site, req, res)
    before = snapshot(sf)
    with pytest.raises(error, match=pattern) as info:
        store.load_reservation(res)
    assert f"reservation {res}" in str(info.value)
    assert type(info.value) is error
    assert snapshot(sf) == before


def test_reservation_not_found(sf: sessionmaker[Session], store: VclStore) -> None:
    before = snapshot(sf)
    with pytest.raises(ReservationNotFoundError, match="reservation 424242 not found"):
        store.load_reservation(424242)
    assert snapshot(sf) == before


def test_vm_path_defaults_to_datastore_path(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    execute(
        sf, "UPDATE vmprofile SET vmpath = '' , datastorepath = '/srv/ds' WHERE id = :p", p=site.vmprofile_id
    )
    _, res = create_request(
        sf,
        computer_id=site.computer_ids[1],
        image_id=site.image_id,
        imagerevision_id=site.imagerevision_id,
        management_node_id=site.management_node_id,
    )
    r = store.load_reservation(res)
    assert (r.vmprofile.datastore_path, r.vmprofile.vm_path) == ("/srv/ds", "/srv/ds")
    assert r.vmprofile.datastore_imagetype == "qcow2"
    assert r.os_minram == 512 and r.minram_mb == 1024
