"""``image``: vcld's image.pm → libvirt capture → image/imagerevision rows → reload request.

The order keeps the user's VM until the new image is recorded:

1. inside the computer lock, everything the database would refuse is checked *before* the guest is
   shut down (new name length and collisions, the ``vclreload`` user): a refusal fails the capture
   (request/computer ``maintenance``, as image.pm) with the domain and its disk untouched;
2. the core shuts the guest down and writes the new master (and repository copy);
3. ``finish_capture`` commits the new image and inserts the reload request;
4. only then is the captured domain deleted; the reload request rebuilds the computer anyway.

A redelivered capture converges: a master already written by an earlier delivery of this claim is
recorded instead of copied again (even when the domain is gone), and a delivery after the commit
finds the request complete (nothing to do).
"""

from __future__ import annotations

import logging
from typing import Any

from worker.db.errors import VclDataError
from worker.db.requests import ClaimOutcome
from worker.failpoints import failpoint
from worker.hypervisors.errors import PermanentError
from worker.hypervisors.provisioner import LibvirtProvisioner

from .claimed import TaskHooks, claimed_work
from .deps import TaskDeps
from .outcomes import ReservationFailed

log = logging.getLogger(__name__)
CAPTURE_SPAN = (10.0, 90.0)


def run_capture(hooks: TaskHooks, reservation_id: int, *, deps: TaskDeps) -> dict[str, Any]:
    """``image``: see the module doc for the order."""
    with claimed_work(hooks, reservation_id, "capture", deps=deps) as work:
        store, r, summary, provisioner = work.store, work.reservation, work.summary, work.provisioner
        new_name = provisioner.get_new_image_name()
        try:
            store.check_capture(r, new_name)
        except VclDataError as exc:
            store.fail_capture(r, f"capture refused before shutdown: {exc}")
            raise ReservationFailed(str(exc)) from exc
        work.still_ours()  # the next step shuts the user's guest down
        with work.failing(lambda msg: store.fail_capture(r, msg)):
            provisioner.initialize()
            existing = provisioner.captured_master(new_name)
            if existing is not None and work.outcome is ClaimOutcome.RESUMED:
                # This claim's earlier delivery wrote the master and died before recording it.
                summary.detail = "master already captured by an earlier delivery; recording it"
                summary.disks = {"master": existing}
                summary.domain = _domain_if_any(provisioner)
            else:
                with work.phase("capture"):
                    result = provisioner.capture(
                        progress=work.progress_reporter(CAPTURE_SPAN, record_loadlog=False)
                    )
                new_name = result.new_image_name
                summary.domain = result.domain_name
                summary.disks = {"master": result.master_path}
                # The core's steps, the guest's ACPI shutdown time among them (core_shutdown).
                summary.timings.update({f"core_{k}": v for k, v in result.timings.items()})
                if result.repository_path:
                    summary.disks["repository"] = result.repository_path
            size_mb = provisioner.get_image_size(new_name)
        failpoint("capture.copied")
        reload_request_id = store.finish_capture(r, new_name, size_mb)
        failpoint("capture.recorded")
        _remove_domain(provisioner, summary.domain)
        failpoint("capture.removed")
    summary.detail = (
        summary.detail + f" new image {new_name} ({size_mb} MB); reload request {reload_request_id}"
    ).strip()
    return work.finish("complete")


def _domain_if_any(provisioner: LibvirtProvisioner) -> str | None:
    """The computer's domain (found by MAC), or None when an earlier delivery already deleted it."""
    try:
        return str(provisioner.get_domain_name())
    except PermanentError:
        return None


def _remove_domain(provisioner: LibvirtProvisioner, domain: str | None) -> None:
    """After the commit: a failure here costs nothing (the reload request deletes the computer's
    domains before it loads), so it is logged, never raised."""
    if domain is None:
        return
    try:
        provisioner.remove_captured_domain(domain)
    except Exception as exc:
        log.warning("captured domain %s not deleted (the reload will): %s", domain, exc)


__all__ = ["run_capture"]
