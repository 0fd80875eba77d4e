"""Delegated mode's database side (vcld's bridge) on MariaDB loaded from vcl.sql: a bridge computer's
reservation in one SELECT, and the rows the store writes for vcld (capture rename, detach) or reads
for the dispatcher's guard (bridge computers a management node serves)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from tests.db.conftest import unique_spec
from tests.db.helpers import computer_row, execute, new_request, one, request_row, snapshot
from worker.db.errors import NotLibvirtProvisionedError, VclDataError
from worker.db.reservation_row import BRIDGE_PERL_PACKAGE, LIBVIRT_PERL_PACKAGE, WORKER_PERL_PACKAGES
from worker.db.seed import SeededSite, seed_site
from worker.db.store import VclStore

REGISTER_SQL = Path(__file__).resolve().parents[2] / "integrations" / "vcld" / "sql" / "register.sql"
_groups = itertools.count(1)


def _register_bridge(sf: sessionmaker[Session]) -> int:
    """Run the bridge's real register.sql (re-runnable); the id of provisioning ``vcl_worker``."""
    body = "\n".join(
        line for line in REGISTER_SQL.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    for statement in body.split(";"):
        if statement.strip():
            execute(sf, statement)
    return int(one(sf, "SELECT id FROM provisioning WHERE name = 'vcl_worker'")["id"])


def _to_bridge(sf: sessionmaker[Session], computer_id: int) -> None:
    prov = _register_bridge(sf)
    execute(sf, "UPDATE computer SET provisioningid = :p WHERE id = :c", p=prov, c=computer_id)


def _counted_load(engine: Engine, store: VclStore, reservation_id: int) -> tuple[Any, list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = store.load_reservation(reservation_id)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return r, statements


def test_bridge_computer_reservation_loads_in_one_select(
    engine: Engine, sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    assert WORKER_PERL_PACKAGES == (LIBVIRT_PERL_PACKAGE, BRIDGE_PERL_PACKAGE)
    _, res = new_request(sf, site)
    as_libvirt, statements = _counted_load(engine, store, res)
    assert len(statements) == 1
    assert as_libvirt.provisioning_module == "libvirt"
    _to_bridge(sf, site.computer_ids[0])
    as_bridge, statements = _counted_load(engine, store, res)
    assert len(statements) == 1, statements
    assert as_bridge.provisioning_module == "vcl_worker"
    # Everything else is read exactly as for a libvirt computer.
    assert replace(as_bridge, provisioning_module="libvirt") == as_libvirt


def test_other_modules_are_refused_naming_both_accepted_ones(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    _, res = new_request(sf, site)
    execute(sf, "UPDATE computer SET provisioningid = 7 WHERE id = :c", c=site.computer_ids[0])
    with pytest.raises(NotLibvirtProvisionedError) as info:
        store.load_reservation(res)
    message = str(info.value)
    assert "'VCL::Module::Provisioning::VMware::VMware'" in message
    assert f"not one of {LIBVIRT_PERL_PACKAGE}, {BRIDGE_PERL_PACKAGE}" in message


def test_rename_captured_image_writes_both_names_and_the_type(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    _, res = new_request(sf, site)
    r = store.load_reservation(res)
    execute(sf, "UPDATE image SET imagetypeid = 1 WHERE id = :i", i=site.image_id)  # 'none'
    computer_before = computer_row(sf, site.computer_ids[0])
    store.rename_captured_image(r, f"{site.imagename[:-3]}-v1", "qcow2")
    image = one(sf, "SELECT name, imagetypeid FROM image WHERE id = :i", i=site.image_id)
    assert image == {"name": f"{site.imagename[:-3]}-v1", "imagetypeid": 7}  # vcl.sql: qcow2 is 7
    rev = one(sf, "SELECT imagename, deleted FROM imagerevision WHERE id = :i", i=site.imagerevision_id)
    assert rev == {"imagename": f"{site.imagename[:-3]}-v1", "deleted": 0}
    assert computer_row(sf, site.computer_ids[0]) == computer_before
    # An unknown datastore type renames and leaves the type alone (update_image_type is skipped).
    store.rename_captured_image(r, f"{site.imagename[:-3]}-v2", "no-such-type")
    image = one(sf, "SELECT name, imagetypeid FROM image WHERE id = :i", i=site.image_id)
    assert image == {"name": f"{site.imagename[:-3]}-v2", "imagetypeid": 7}
    assert one(sf, "SELECT imagename FROM imagerevision WHERE id = :i", i=site.imagerevision_id) == {
        "imagename": f"{site.imagename[:-3]}-v2"
    }


@pytest.mark.parametrize("bad_name", ["", "x" * 71, "noimage"])
def test_rename_captured_image_refuses_a_bad_name_and_changes_nothing(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite, bad_name: str
) -> None:
    _, res = new_request(sf, site)
    r = store.load_reservation(res)
    before = snapshot(sf)
    with pytest.raises(VclDataError, match=r"cannot be renamed|invalid new image name"):
        store.rename_captured_image(r, bad_name, "qcow2")  # "noimage": image.name is unique
    assert snapshot(sf) == before


def test_detach_computer_sets_noimage_and_clears_the_vm_host(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    req, _ = new_request(sf, site)
    cid = site.computer_ids[0]
    before = computer_row(sf, cid)
    request_before = request_row(sf, req)
    assert before["vmhostid"] == site.vmhost_id
    assert store.detach_computer(cid) is True
    noimage = one(
        sf,
        "SELECT imageid, id FROM imagerevision WHERE imagename = 'noimage'"
        " ORDER BY production DESC, id LIMIT 1",
    )
    after = computer_row(sf, cid)
    assert (after["currentimageid"], after["imagerevisionid"], after["vmhostid"]) == (
        noimage["imageid"],
        noimage["id"],
        None,
    )
    # Only those three columns: no computer or request state is written (they are vcld's).
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {"currentimageid", "imagerevisionid", "vmhostid"}
    assert after["state"] == before["state"]
    assert request_row(sf, req) == request_before
    # The other computer of the site is untouched.
    assert computer_row(sf, site.computer_ids[1])["vmhostid"] == site.vmhost_id


def test_bridge_computers_reserved_through_the_node(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite
) -> None:
    mn = site.management_node_id
    new_request(sf, site, 0)
    new_request(sf, site, 1)
    assert store.bridge_computers(mn) == []  # libvirt computers only: the dispatcher may run
    _to_bridge(sf, site.computer_ids[0])
    _to_bridge(sf, site.computer_ids[1])
    hostnames = [computer_row(sf, c)["hostname"] for c in site.computer_ids]
    assert store.bridge_computers(mn) == hostnames
    assert store.bridge_computers(mn, limit=1) == hostnames[:1]
    other = seed_site(sf, unique_spec())
    assert store.bridge_computers(other.management_node_id) == []
    execute(sf, "UPDATE computer SET deleted = 1 WHERE id = :c", c=site.computer_ids[0])
    assert store.bridge_computers(mn) == hostnames[1:]


def _group(sf: sessionmaker[Session], resourcetype: int, resource_type_name: str, subid: int) -> int:
    """A new resource group of ``resourcetype`` holding the resource of ``subid``; its id."""
    name = f"dlg-{resource_type_name}-{next(_groups)}-{subid}"
    execute(
        sf,
        "INSERT INTO resourcegroup (name, ownerusergroupid, resourcetypeid) VALUES (:n, 3, :t)",
        n=name,
        t=resourcetype,
    )
    gid = int(one(sf, "SELECT id FROM resourcegroup WHERE name = :n", n=name)["id"])
    execute(
        sf,
        "INSERT INTO resourcegroupmembers (resourceid, resourcegroupid)"
        " SELECT id, :g FROM resource WHERE resourcetypeid = :t AND subid = :s",
        g=gid,
        t=resourcetype,
        s=subid,
    )
    return gid


@pytest.mark.parametrize("node_first", [True, False])
def test_bridge_computers_mapped_to_the_node_by_resourcemap(
    sf: sessionmaker[Session], store: VclStore, site: SeededSite, node_first: bool
) -> None:
    """A bridge computer never reserved through the node is still the node's when its group is
    mapped to the node's group (resourcemap, in either column order)."""
    mn = site.management_node_id
    cid = site.computer_ids[1]
    _to_bridge(sf, cid)
    assert store.bridge_computers(mn) == []  # not reserved through it, not mapped yet
    computers = _group(sf, 12, "computer", cid)
    nodes = _group(sf, 16, "managementnode", mn)
    if node_first:
        execute(
            sf,
            "INSERT INTO resourcemap (resourcegroupid1, resourcetypeid1, resourcegroupid2, resourcetypeid2)"
            " VALUES (:n, 16, :c, 12)",
            n=nodes,
            c=computers,
        )
    else:
        execute(
            sf,
            "INSERT INTO resourcemap (resourcegroupid1, resourcetypeid1, resourcegroupid2, resourcetypeid2)"
            " VALUES (:c, 12, :n, 16)",
            n=nodes,
            c=computers,
        )
    assert store.bridge_computers(mn) == [computer_row(sf, cid)["hostname"]]
    other = seed_site(sf, unique_spec())
    assert store.bridge_computers(other.management_node_id) == []
