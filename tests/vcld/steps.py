"""The steps the vcld tests take as VCL's users do (the web's XML-RPC), and what they wait for."""

from __future__ import annotations

import time
from pathlib import Path

from tests.vcld.site import IMAGE_ID, BridgeSite
from worker.hypervisors.postload import GuestLogin, GuestShell

READY_TIMEOUT = 900  # web 'ready' under TCG on a 2-core host with other suites running beside


def add(site: BridgeSite, image_id: int = IMAGE_ID, minutes: int = 60) -> tuple[int, float]:
    """``XMLRPCaddRequest(image, 'now', minutes)``: (request id, monotonic time of the call)."""
    t0 = time.monotonic()
    res = site.web.rpc("XMLRPCaddRequest", image_id, "now", minutes)
    assert res.get("status") == "success", res
    return int(res["requestid"]), t0


def ready(site: BridgeSite, request_id: int) -> bool:
    """The web says 'ready' (a failed/timed-out request fails the test at once, with vcld's log)."""
    status = site.status(request_id)
    if status in ("failed", "timedout", "error"):
        raise AssertionError(f"request {request_id} {status}:\n{site.vcld.tail()}")
    return status == "ready"


def wait_ready(site: BridgeSite, request_id: int, timeout: float = READY_TIMEOUT) -> None:
    site.wait(f"request {request_id} ready", lambda: ready(site, request_id), timeout)


def request_in(site: BridgeSite, request_id: int, state: str) -> bool:
    return (site.request_state(request_id) or ("",))[0] == state


def available(site: BridgeSite, vm_id: int) -> bool:
    """The computer is available and no request of it is left to process."""
    active = site.one(
        "SELECT COUNT(*) FROM request r JOIN reservation v ON v.requestid = r.id"
        " JOIN state s ON s.id = r.stateid"
        " WHERE v.computerid = :c AND s.name NOT IN ('complete', 'failed')",
        c=vm_id,
    )[0]
    return bool(site.computer(vm_id).state == "available" and active == 0)


def wait_available(site: BridgeSite, vm_id: int, timeout: float = READY_TIMEOUT) -> None:
    site.wait(f"computer {vm_id} available", lambda: available(site, vm_id), timeout, 2)


def shell(site: BridgeSite, address: str, key: Path | None = None) -> GuestShell:
    """Root in a guest of this machine's network namespace, with the site's (or ``key``'s) key."""
    return GuestShell(GuestLogin(address=address, key_files=(str(key or site.private_key),)))


def shares(site: BridgeSite, reservation_id: int, total: float) -> dict[str, float]:
    """Where the time from XMLRPCaddRequest to 'ready' went: worker tasks, guest boot, the rest."""
    calls = site.calls(reservation_id)
    worker = sum(float(c["timings"].get("total", 0.0)) for c in calls)
    guest = sum(float(c["timings"].get("core_guest_ready", 0.0)) for c in calls)
    return {"total": round(total, 1), "worker (vcl.call tasks)": round(worker - guest, 1),
            "guest boot to SSH": round(guest, 1), "vcld + bridge CLI": round(total - worker, 1)}  # fmt: skip
