"""The dispatcher must not claim on a management node that vcld serves through the bridge.

vcld processes every reservation whose ``managementnodeid`` is its own, whatever the computer's
module; the dispatcher claims the same requests. Both on one node would race for every request
(``new`` → ``pending`` by either side), so ``vcl-worker dispatch`` refuses to run there.
"""

from __future__ import annotations

from worker.db.reservation_row import BRIDGE_PERL_PACKAGE
from worker.db.store import VclStore


class VcldServesManagementNodeError(SystemExit):
    """vcld serves this management node through the bridge; the dispatcher must not run there.

    A ``SystemExit`` on purpose: ``vcl-worker dispatch`` then stops with this message and exit status 1
    instead of a traceback, and the dispatcher loop's catch-all for failed passes (``except
    Exception``) cannot swallow it and keep claiming."""


def refuse_if_vcld_serves(store: VclStore, management_node_id: int) -> None:
    """Raise :class:`VcldServesManagementNodeError` when ``management_node_id`` serves computers
    whose provisioning module is the bridge (``VCL::Module::Provisioning::vcl_worker``)."""
    found = store.bridge_computers(management_node_id)
    if found:
        raise VcldServesManagementNodeError(
            f"management node {management_node_id} is served by vcld: its computers "
            f"{', '.join(found)} use {BRIDGE_PERL_PACKAGE} (vcld calls the worker through "
            "`vcl-worker call`). Running `vcl-worker dispatch` for the same node would claim the "
            "same requests as vcld; stop vcld there, or dispatch for a management node without "
            "bridge computers."
        )


__all__ = ["VcldServesManagementNodeError", "refuse_if_vcld_serves"]
