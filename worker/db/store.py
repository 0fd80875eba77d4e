"""All reads and writes the worker makes to the VCL database, modelled on vcld (``utils.pm``,
``State.pm``, ``new.pm``, ``image.pm``; see shared/reference/vcl-behaviour.md section 3).

:class:`VclStore` is a facade: every public method is one explicit transaction
(``with self._sf.begin()``) around one function of the modules that hold the SQL
(:mod:`~worker.db.requests` for guarded state changes, :mod:`~worker.db.load`,
:mod:`~worker.db.capture`, :mod:`~worker.db.schedule`, :mod:`~worker.db.reservation_row`,
:mod:`~worker.db.inventory`, :mod:`~worker.db.reads`, :mod:`~worker.db.delegated`). A method
either commits completely or, on any exception, rolls back completely.

Request state changes are guarded like ``utils.pm:update_request_state`` (see
:mod:`worker.db.requests`): when the guard matches no row and the request is already in the target
state the method is a no-op (a redelivered Celery task finishing twice); otherwise
:class:`~worker.db.errors.StateConflictError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from worker.db import (
    cancel,
    capture,
    claim_batch,
    claims,
    delegated,
    load,
    reads,
    reclaim,
    requests,
    schedule,
    sweep,
)
from worker.db.cancel import CancelOutcome, HandBack
from worker.db.claim_batch import ClaimWish
from worker.db.engine import db_now
from worker.db.errors import ReservationNotFoundError
from worker.db.inventory import HostInventory, host_inventory
from worker.db.loadlog import LoadLogEntry, insert_loadlog, loadlog_entries
from worker.db.reclaim import Reclaimed
from worker.db.requests import ClaimOutcome, VclIds
from worker.db.reservation_row import reservation_from_row, reservation_query
from worker.db.schedule import DueRequest
from worker.db.sweep import PendingClaim
from worker.reservation import Reservation


class VclStore:
    """The VCL database as the worker sees it. Thread-safe (no per-call state besides id caches)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sf = session_factory
        self._ids = VclIds()

    # ------------------------------------------------------------------ reads

    def load_reservation(self, reservation_id: int) -> Reservation:
        """Everything the provisioning core needs about one reservation, in ONE SELECT.

        ``request_state`` is ``state.name`` of ``request.stateid``, except for a ``pending`` request
        where it is the laststate (the state the request was claimed from, as vcld's polled value).
        For a pending request the pre-claim laststate is gone from the database, so
        ``request_laststate`` then equals ``request_state``.
        """
        with self._sf.begin() as s:
            row = s.execute(reservation_query(reservation_id)).one_or_none()
        if row is None:
            raise ReservationNotFoundError(f"reservation {reservation_id} not found")
        return reservation_from_row(reservation_id, row._mapping)

    def request_states(self, request_id: int) -> tuple[str, str] | None:
        """(state name, laststate name) of the request, or ``None`` if it does not exist."""
        with self._sf.begin() as s:
            return reads.request_states(s, request_id)

    def reservation_request(self, reservation_id: int) -> tuple[int, str, str] | None:
        """(request id, state name, laststate name) of a reservation's request, or ``None``."""
        with self._sf.begin() as s:
            return reads.reservation_request(s, reservation_id)

    def computer_state(self, computer_id: int) -> str:
        with self._sf.begin() as s:
            return reads.computer_state(s, computer_id)

    def vmhost_short_name(self, reservation_id: int) -> str | None:
        """Short hostname of the VM host serving the reservation's computer (task routing)."""
        with self._sf.begin() as s:
            return reads.vmhost_short_name(s, reservation_id)

    def loadlog(self, reservation_id: int) -> list[LoadLogEntry]:
        with self._sf.begin() as s:
            return loadlog_entries(s, reservation_id)

    def host_inventory(self, vmhost_name: str) -> HostInventory:
        """What is live on the VM host ``vmhost_name`` (``vcl-worker reap``); see
        :mod:`worker.db.inventory`. Raises :class:`~worker.db.inventory.UnknownVMHostError`."""
        with self._sf.begin() as s:
            return host_inventory(s, vmhost_name)

    # ------------------------------------------------------------------ claim / loadlog

    def claim_request(self, request_id: int, from_state: str) -> ClaimOutcome:
        """``State.pm:initialize`` step 3: ``update_request_state(req, 'pending', from_state)``."""
        with self._sf.begin() as s:
            return requests.claim(s, self._ids, request_id, from_state)

    def claim_for_task(
        self, request_id: int, reservation_id: int, from_state: str, task_id: str, *, sent: bool = True
    ) -> ClaimOutcome:
        """:meth:`claim_request` tied to Celery task ``task_id`` (the ``begin`` row, see
        :mod:`worker.db.claims`); another task's claim is LOST. ``sent``: the task already runs."""
        with self._sf.begin() as s:
            return claims.claim_for_task(
                s, self._ids, request_id, reservation_id, from_state, task_id=task_id, sent=sent
            )

    def owns_claim(self, reservation_id: int, task_id: str) -> bool:
        """False when the sweep handed the reservation's claim to another task."""
        with self._sf.begin() as s:
            return claims.owns_claim(s, self._ids, reservation_id, task_id)

    def mark_claim_sent(self, reservation_id: int, task_id: str) -> bool:
        with self._sf.begin() as s:
            return claims.mark_sent(s, self._ids, reservation_id, task_id)

    def drop_claim(self, request_id: int, reservation_id: int, from_state: str) -> bool:
        """Undo :meth:`claim_for_task` (``send_task`` failed)."""
        with self._sf.begin() as s:
            return claims.drop_claim(s, self._ids, request_id, reservation_id, from_state)

    def claim_many(self, wishes: Sequence[ClaimWish]) -> list[ClaimWish]:
        """A dispatcher pass's claims in one transaction and a constant number of statements; returns
        the wishes claimed (see :mod:`worker.db.claim_batch`)."""
        with self._sf.begin() as s:
            return claim_batch.claim_many(s, self._ids, wishes)

    def mark_many_sent(self, claimed: Sequence[ClaimWish]) -> int:
        with self._sf.begin() as s:
            return claim_batch.mark_many_sent(s, self._ids, claimed)

    def drop_many(self, claimed: Sequence[ClaimWish]) -> None:
        """Undo :meth:`claim_many` for tasks that were never published."""
        with self._sf.begin() as s:
            claim_batch.drop_many(s, self._ids, claimed)

    def retarget_claim(self, reservation_id: int, old: claims.ClaimRecord, new_task_id: str) -> bool:
        """Hand a lost claim to ``new_task_id``; True for exactly one caller per ``old`` row."""
        with self._sf.begin() as s:
            return claims.retarget(s, self._ids, reservation_id, old, new_task_id)

    def fail_stranded(self, reservation_id: int, task_id: str | None, message: str) -> bool:
        """vcld's ``reservation_failed`` for a claim whose task cannot record it (hard time limit,
        retries or redeliveries exhausted, lost task); see :func:`worker.db.claims.fail_stranded`."""
        with self._sf.begin() as s:
            return claims.fail_stranded(s, self._ids, reservation_id, task_id, message)

    def pending_claims(self, management_node_id: int) -> list[PendingClaim]:
        """The management node's ``pending`` requests with their claim rows (the sweep's input)."""
        with self._sf.begin() as s:
            return sweep.pending_claims(s, self._ids, management_node_id)

    def reclaim(self, request_id: int, reservation_id: int, state: str) -> Reclaimed:
        """``reclaim.pm`` for a ``deleted``/``timeout`` request; see :mod:`worker.db.reclaim`."""
        with self._sf.begin() as s:
            return reclaim.reclaim(s, self._ids, request_id, reservation_id, state)

    def hand_back(self, r: Reservation, how: HandBack, message: str) -> CancelOutcome:
        """A load that found its request deleted by the user: ``complete/deleted`` and the computer
        back (``available``, or a reload request where the disk was touched); LOST when someone else
        completed it. See :func:`worker.db.cancel.hand_back`."""
        with self._sf.begin() as s:
            return cancel.hand_back(s, self._ids, r, how, message)

    def time_out(self, request_id: int, reservation_id: int, state: str) -> bool:
        """``inuse.pm`` at the end time: ``timeout/<state>``, computer ``timeout``, log ending EOR;
        False when the request is not ``state`` or not past its end any more (an extension)."""
        with self._sf.begin() as s:
            return cancel.time_out(s, self._ids, request_id, reservation_id, state)

    def insert_loadlog(
        self, reservation_id: int, computer_id: int, loadstatename: str, info: str = ""
    ) -> None:
        """``utils.pm:insertloadlog``."""
        with self._sf.begin() as s:
            insert_loadlog(s, self._ids, reservation_id, computer_id, loadstatename, info=info, now=db_now(s))

    # ------------------------------------------------------------------ load (new.pm)

    def start_load(self, r: Reservation) -> None:
        """``new.pm:reload_image`` up to ``provisioner->load()``: statuscheck, loadimageblade,
        computer -> reloading (+ info), doesimageexists, info (calling load).

        The request must still be claimed (pending/<r.request_state>), else StateConflictError.
        """
        with self._sf.begin() as s:
            load.start_load(s, self._ids, r)

    def finish_load(self, r: Reservation) -> None:
        """Success of ``new.pm`` (reference 3.4 step 8-9, 3.9).

        ``new``/``reinstall`` -> request ``reserved``; the computer goes to ``reserved`` at once
        because this worker has no reserved.pm (whose first step sets it). ``reload``/``imageprep``
        -> request ``complete``, computer ``available``; ``tovmhostinuse`` -> complete/vmhostinuse.
        Loadlog rows are then cleaned up as ``state_exit`` does (only ``begin`` rows for ``new``,
        all rows otherwise — vcld treats ``reinstall`` like reload here) and ``exited`` inserted.
        """
        with self._sf.begin() as s:
            load.finish_load(s, self._ids, r)

    def record_generated_macs(self, r: Reservation, eth0: str | None, eth1: str | None) -> dict[str, str]:
        """The MACs a load generated for the computer's eth0/eth1 into ``computer.eth<n>macaddress``
        (capture and power calls find the domain by them); {column: MAC} of what was written."""
        with self._sf.begin() as s:
            return load.record_generated_macs(s, r, eth0, eth1)

    def fail_load(self, r: Reservation, message: str) -> None:
        """``reservation_failed`` for a load state: loadimagefailed + failed rows, request
        ``failed/<state>``, computer ``failed``, log ending ``failed`` for new; then state_exit's
        loadlog cleanup (begin rows only for new, so the failure rows stay visible to the web; all
        rows for reload etc., exactly as vcld) and ``exited``."""
        with self._sf.begin() as s:
            load.fail_load(s, self._ids, r, message)

    def finish_maintenance(self, r: Reservation) -> None:
        """``new.pm`` tomaintenance + ``libvirt.pm:post_maintenance_action``: computer
        ``maintenance`` with current image ``noimage`` and ``vmhostid`` NULL; request
        ``complete/tomaintenance``; loadlog rows of the request deleted, ``exited`` inserted."""
        with self._sf.begin() as s:
            load.finish_maintenance(s, self._ids, r)

    def fail_request(self, request_id: int, reservation_id: int, message: str) -> None:
        """``reservation_failed`` when the reservation's data cannot even be loaded.

        The request goes ``failed/<claimed state>`` (only from ``pending``, guarded) and a ``failed``
        computerloadlog row records the message; the computer, if the row exists, goes ``failed``
        unless it is in maintenance. Image requests go to ``maintenance`` as image.pm does.
        """
        with self._sf.begin() as s:
            load.fail_request(s, self._ids, request_id, reservation_id, message)

    # ------------------------------------------------------------------ capture (image.pm)

    def check_capture(self, r: Reservation, new_image_name: str) -> None:
        """Everything :meth:`finish_capture` would refuse, before the guest is shut down; VclDataError."""
        with self._sf.begin() as s:
            capture.check_capture(s, r, new_image_name)

    def finish_capture(self, r: Reservation, new_image_name: str, size_mb: int) -> int:
        """``image.pm`` success (reference 3.6 steps 8-11). Returns the new reload request id
        (0 when nothing was inserted: already finished, or the computer already in a reload state).

        ``imagerevision.imagename`` and ``image.name`` both become ``new_image_name``: unlike vcld
        (which writes the pre-capture name back into ``image.name``, section 3.6 step 9) the image
        name here always matches the captured files' name.
        """
        with self._sf.begin() as s:
            return capture.finish_capture(s, self._ids, r, new_image_name, size_mb)

    def fail_capture(self, r: Reservation, message: str) -> None:
        """``image.pm:reservation_failed``: failed row, request ``maintenance/image``, computer
        ``maintenance``; state_exit then deletes the request's loadlog rows (old state image) and
        inserts ``exited``. vcld never picks a maintenance request up again: an admin must."""
        with self._sf.begin() as s:
            capture.fail_capture(s, self._ids, r, message)

    # ------------------------------------------------------------------ vcld main loop

    def find_due_requests(self, management_node_id: int, now: datetime | None = None) -> list[DueRequest]:
        """``get_management_node_requests`` + ``check_time`` in ONE query (reference 3.1-3.2); see
        :func:`worker.db.schedule.find_due_requests`. ``now`` defaults to the database's ``NOW()``."""
        with self._sf.begin() as s:
            return schedule.find_due_requests(s, management_node_id, now)

    def update_lastcheckin(self, management_node_id: int) -> int:
        """``utils.pm:update_lastcheckin``; returns ``managementnode.checkininterval`` (seconds)."""
        with self._sf.begin() as s:
            return schedule.update_lastcheckin(s, management_node_id)

    def checkin_interval(self, management_node_id: int) -> int:
        """``managementnode.checkininterval`` in seconds (vcld's default 12 when missing)."""
        with self._sf.begin() as s:
            return schedule.checkin_interval(s, management_node_id)

    def delete_request(self, request_id: int) -> None:
        """``utils.pm:delete_request``: computerloadlog rows, then reservations, then the request."""
        with self._sf.begin() as s:
            schedule.delete_request(s, request_id)

    # ------------------------------------------------------------------ delegated mode (vcld's bridge)

    def rename_captured_image(self, r: Reservation, new_image_name: str, datastore_imagetype: str) -> None:
        """What ``libvirt.pm:capture`` writes for vcld: image.name and imagerevision.imagename become
        ``new_image_name``, image.imagetypeid the datastore's type; see
        :func:`worker.db.delegated.rename_captured_image`. Raises VclDataError for a bad name."""
        with self._sf.begin() as s:
            delegated.rename_captured_image(s, r, new_image_name, datastore_imagetype)

    def detach_computer(self, computer_id: int) -> bool:
        """What ``libvirt.pm:post_maintenance_action`` writes for vcld: current image ``noimage``,
        ``vmhostid`` NULL. Returns whether the ``noimage`` revision existed (vcld only warns)."""
        with self._sf.begin() as s:
            return delegated.detach_computer(s, computer_id)

    def bridge_computers(self, management_node_id: int, limit: int = 5) -> list[str]:
        """Hostnames (at most ``limit``) of live computers of the bridge module
        (``VCL::Module::Provisioning::vcl_worker``) that ``management_node_id`` serves: reserved
        through it or mapped to it by ``resourcemap`` (the dispatcher's guard)."""
        with self._sf.begin() as s:
            return delegated.bridge_computers(s, management_node_id, limit)


__all__ = ["VclStore"]
