"""host_inventory: what the VCL database says is live on one VM host (the reaper's input)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.db.conftest import unique_spec
from tests.db.helpers import execute, one
from worker.db.inventory import UnknownVMHostError
from worker.db.seed import create_capture_request, create_request, seed_site
from worker.db.store import VclStore


def test_live_protected_and_masters(sf: sessionmaker[Session], store: VclStore) -> None:
    spec = unique_spec()
    first = spec.vm_hostnames[0]
    names = tuple(first.replace("a.", f"{x}.", 1) for x in "abcd")
    spec = dataclasses.replace(spec, vm_hostnames=names)
    site = seed_site(sf, spec)
    a, b, c, d = site.computer_ids
    sa, sb, sc, sd = (n.split(".")[0] for n in names)
    img, rev = site.image_id, 0
    noimage = one(sf, "SELECT imageid, revision FROM imagerevision WHERE imagename = 'noimage' LIMIT 1")
    nimg, nrev = noimage["imageid"], noimage["revision"]

    def request(cid: int, state: str, laststate: str, revision_id: int) -> int:
        return create_request(
            sf, computer_id=cid, image_id=img, imagerevision_id=revision_id,
            management_node_id=site.management_node_id, state=state, laststate=laststate,
        )[0]  # fmt: skip

    # a: loaded with the site's image; an old, finished request does not keep noimage alive
    execute(
        sf,
        "UPDATE computer SET stateid = 3, imagerevisionid = :r WHERE id = :id",
        r=site.imagerevision_id,
        id=a,
    )
    request(a, "complete", "reload", 1)
    # b: a capture in progress protects the whole computer
    create_capture_request(sf, computer_id=b, image_id=img, management_node_id=site.management_node_id)
    # c: a claimed (pending) load keeps its revision live before the computer row changes
    store.claim_request(request(c, "new", "new", site.imagerevision_id), "new")
    # d: in maintenance, so nothing of it is live, even with an active request
    execute(sf, "UPDATE computer SET stateid = 10 WHERE id = :id", id=d)
    request(d, "new", "new", site.imagerevision_id)

    inv = store.host_inventory(spec.vmhost_hostname.split(".")[0])
    assert inv.vmhost_id == site.vmhost_id
    assert store.host_inventory(spec.vmhost_hostname).vmhost_id == site.vmhost_id
    assert (inv.vmpath, inv.datastorepath, inv.imagetype) == ("/var/lib/libvirt/images",) * 2 + ("qcow2",)
    assert {sa, sb, sc, sd} <= set(inv.computers)
    assert [x.id for x in inv.computers[sd]] == [d] and inv.computers[sd][0].state == "maintenance"
    assert (sa, img, rev) in inv.live
    assert (sa, nimg, nrev) not in inv.live
    assert (sc, img, rev) in inv.live and (sc, nimg, nrev) in inv.live
    assert not any(key[0] == sd for key in inv.live)
    assert inv.protected >= {sb} and not inv.protected & {sa, sc, sd}
    assert {site.imagename, "noimage"} <= inv.master_stems
    assert not inv.computers[sd][0].on_host(inv.vmhost_id) and inv.computers[sa][0].on_host(inv.vmhost_id)


def test_unknown_vmhost(store: VclStore) -> None:
    with pytest.raises(UnknownVMHostError, match="'nosuchhost': 0 matching vmhost rows") as info:
        store.host_inventory("nosuchhost")
    assert isinstance(info.value, ValueError)
