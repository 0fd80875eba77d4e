"""A capture must not lose the user's VM (issue 12), through a real worker, libvirtd and MariaDB.

Injections (each counted in "faults injected"):
* an image whose prettyname has 80 characters: the new name still fits image.name (70), the capture
  is recorded and the files carry the recorded name;
* a new name another image already holds: refused before the shutdown, the domain still running on
  its overlay, no master written, request and computer in maintenance (image.pm's failure);
* the worker child SIGKILLed after the master was written, after the commit, after the domain was
  deleted: the redelivered capture converges (recorded once, one reload request, domain gone).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from worker.db.seed import create_capture_request
from worker.devkit.images import sha256
from worker.hypervisors import naming

from .conftest import (
    COUNTERS,
    FaultStack,
    Worker,
    make_fault_master,
    request_states,
    running_worker,
    send,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
LONG_PRETTY = "Long Pretty Name " + "x" * 63  # 80 characters, as VCL's web allows


@pytest.fixture
def worker(fstack: FaultStack) -> Iterator[Worker]:
    with running_worker(fstack, concurrency=1) as w:
        yield w


def _image(fs: FaultStack, pretty: str, tag: str) -> tuple[int, int]:
    name = f"vmwarelinux-{tag}{fs.run_id}-v0"
    image_id, rev_id = fs.add_image(pretty, name)
    make_fault_master(fs.datastore / f"{name}.qcow2")
    fs.master_sums[str(fs.datastore / f"{name}.qcow2")] = sha256(fs.datastore / f"{name}.qcow2")
    return image_id, rev_id


def _loaded(fs: FaultStack, index: int, image: tuple[int, int], worker: Worker) -> tuple[int, int]:
    """Computer ``index`` loaded with ``image`` and an ``image`` request for it: (request, reservation)."""
    fs.reset_computer(index)
    res = fs.new_reservation(index, *image)
    result = send(fs, "vcl.load", res).get(timeout=240, propagate=False)
    assert isinstance(result, dict) and result["status"] == "done", f"{result!r}\n{worker.tail(3000)}"
    request_id, cap_res, _ = create_capture_request(
        fs.sf, computer_id=fs.site.computer_ids[index], image_id=image[0],
        management_node_id=fs.site.management_node_id,
    )  # fmt: skip
    return request_id, cap_res


def _running(fs: FaultStack, index: int) -> list[str]:
    c = fs.conn()
    try:
        return [
            d
            for d in fs.domains(fs.short(index))
            if c.lookupByName(d).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        ]
    finally:
        c.close()


def _recorded(fs: FaultStack, cap_res: int, index: int, domain_gone: bool = True) -> str:
    """The capture's end state: request complete/image, image named like its new master (<= 70),
    exactly one reload request for the computer, the captured domain gone. Returns the new name."""
    assert request_states(fs, cap_res) == ("complete", "image")
    row = fs.one(
        "SELECT i.name, ir.imagename FROM reservation rs JOIN image i ON i.id = rs.imageid"
        " JOIN imagerevision ir ON ir.id = rs.imagerevisionid WHERE rs.id = :r",
        r=cap_res,
    )
    assert row.name == row.imagename and len(row.name) <= naming.MAX_IMAGE_NAME, row
    master = fs.datastore / f"{row.name}.qcow2"
    assert master.exists(), master
    fs.master_sums[str(master)] = sha256(master)
    reloads = fs.one(
        "SELECT COUNT(*) FROM request rq JOIN reservation rs ON rs.requestid = rq.id"
        " WHERE rs.computerid = :c AND rq.stateid = (SELECT id FROM state WHERE name = 'reload')",
        c=fs.site.computer_ids[index],
    )
    assert reloads[0] == 1, reloads
    assert (fs.domains(fs.short(index)) == []) is domain_gone
    return str(row.name)


def test_capture_with_an_80_character_prettyname(fstack: FaultStack, worker: Worker) -> None:
    index = 24
    image = _image(fstack, LONG_PRETTY, "LongPretty")
    _, cap_res = _loaded(fstack, index, image, worker)
    COUNTERS["faults injected"] += 1
    result = send(fstack, "vcl.capture", cap_res).get(timeout=240, propagate=False)
    assert isinstance(result, dict) and result["status"] == "done", f"{result!r}\n{worker.tail(3000)}"
    name = _recorded(fstack, cap_res, index)
    assert name.startswith("linux-LongPrettyName") and len(name) == naming.MAX_IMAGE_NAME, name


def test_capture_refused_before_the_shutdown_keeps_the_vm(fstack: FaultStack, worker: Worker) -> None:
    index = 25
    image = _image(fstack, f"Collide {fstack.run_id}", "Collide")
    _, cap_res = _loaded(fstack, index, image, worker)
    r = fstack.store.load_reservation(cap_res)
    new_name = naming.new_image_name(r.os_name, r.image_prettyname, r.image_id, r.imagerevision_revision)
    fstack.add_image(f"Squatter {fstack.run_id}", new_name)  # another image already holds the name
    overlays = sorted(p.name for p in fstack.datastore.glob(f"{fstack.short(index)}_*"))
    before = _running(fstack, index)
    assert len(before) == 1
    COUNTERS["faults injected"] += 1
    result = send(fstack, "vcl.capture", cap_res)
    failure = result.get(timeout=240, propagate=False)
    assert result.state == "FAILURE" and "already used" in repr(failure), failure
    assert request_states(fstack, cap_res) == ("maintenance", "image")
    assert fstack.store.computer_state(fstack.site.computer_ids[index]) == "maintenance"
    assert _running(fstack, index) == before  # never shut down
    assert sorted(p.name for p in fstack.datastore.glob(f"{fstack.short(index)}_*")) == overlays
    assert not (fstack.datastore / f"{new_name}.qcow2").exists()
    fstack.reset_computer(index)


@pytest.mark.parametrize(
    ("point", "index"), [("capture.copied", 26), ("capture.recorded", 27), ("capture.removed", 28)]
)
def test_redelivered_capture_converges(fstack: FaultStack, point: str, index: int) -> None:
    image = _image(fstack, f"Redeliver {point} {fstack.run_id}", f"Redeliver{index}x")
    with running_worker(fstack, concurrency=1) as plain:
        _, cap_res = _loaded(fstack, index, image, plain)
    marker: Path = fstack.tmp / f"fired-{point}"
    env = {"VCL_FAILPOINT": point, "VCL_FAILPOINT_MARKER": str(marker)}
    with running_worker(fstack, concurrency=1, **env) as w:
        result = send(fstack, "vcl.capture", cap_res).get(timeout=240, propagate=False)
        log = w.tail(20000)
    assert marker.exists(), log
    COUNTERS["faults injected"] += 1
    assert isinstance(result, dict), f"{result!r}\n{log}"
    assert result["status"] == ("done" if point == "capture.copied" else "skipped"), result
    # Killed between the commit and the deletion, the domain is left to the reload request, which
    # deletes every domain of the computer before it loads the new revision onto a fresh disk.
    name = _recorded(fstack, cap_res, index, domain_gone=point != "capture.recorded")
    reload_res = fstack.one(
        "SELECT rs.id FROM reservation rs JOIN request rq ON rq.id = rs.requestid WHERE rs.computerid = :c"
        " AND rq.stateid = (SELECT id FROM state WHERE name = 'reload')",
        c=fstack.site.computer_ids[index],
    )[0]
    with running_worker(fstack, concurrency=1) as plain:
        done = send(fstack, "vcl.reload", reload_res).get(timeout=240, propagate=False)
        assert isinstance(done, dict) and done["status"] == "done", f"{done!r}\n{plain.tail(3000)}"
    assert fstack.store.computer_state(fstack.site.computer_ids[index]) == "available"
    (domain,) = fstack.domains(fstack.short(index))
    r = fstack.store.load_reservation(cap_res)
    assert domain.endswith(f"_{r.image_id}-v{r.imagerevision_revision}"), (domain, name)
    fstack.reset_computer(index)
