"""Domain lifecycle rules of VCL: which disks a deletion may remove, a computer's old domains, and
whether a computer already runs its revision (node_status)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from worker.hypervisors import naming, qemuimg
from worker.hypervisors.domain_xml import ParsedDomain
from worker.hypervisors.errors import PermanentError
from worker.hypervisors.guest import Guest, PowerState
from worker.hypervisors.guest_access import probe_status
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.host_keys import HostKeyPin
from worker.hypervisors.layout import Layout
from worker.hypervisors.node_status import NodeStatus
from worker.hypervisors.roots import is_under

log = logging.getLogger(__name__)
_COMPUTER_PREFIX_RE = re.compile(r"^([^:_]+)[:_]")


def remove_domain(guest: Guest, *, image_state: bool, roots: Sequence[str] | None = None) -> None:
    """VCL delete_domain: power off, snapshots, disks, undefine.

    In the image state every disk goes (it is the captured COW); otherwise only disks named after the
    domain's computer (``<short>_*``), so a definition pointing at a master never deletes the master.
    With ``roots`` no disk outside the configured roots is ever deleted, in any state.
    """
    m = _COMPUTER_PREFIX_RE.match(guest.name)
    computer = m.group(1) if m else None

    def may_delete(path: str) -> bool:
        if roots is not None and not any(is_under(os.path.realpath(path), r) for r in roots):
            return False
        return image_state or (computer is not None and naming.is_computer_disk(path, computer))

    guest.delete(may_delete)


def remove_computer_domains(
    host: LibvirtHost, computer_short_name: str, *, image_state: bool, roots: Sequence[str] | None = None
) -> list[str]:
    """Delete every domain named ``<short>_…``/``<short>:…`` (delete_existing_domains); their names.

    A COW of this computer left by a failed load (no domain) is replaced by the next load itself.
    """
    removed = []
    for guest in host.list_guests():
        if naming.is_computer_domain(guest.name, computer_short_name):
            remove_domain(guest, image_state=image_state, roots=roots)
            removed.append(guest.name)
    return removed


def node_status(
    host: LibvirtHost,
    layout: Layout,
    info_timeout: float,
    *,
    probe_guest: bool = True,
    host_keys: HostKeyPin | None = None,
) -> NodeStatus:
    """VCL's node_status (Provisioning.pm; libvirt.pm inherits it), with the disk checks libvirt.pm
    never made. The verdicts are VCL's (see :class:`NodeStatus`).

    RELOAD unless this revision's domain exists with its COW backed by this revision's master; RELOAD
    too when the domain is not running or its guest does not answer (Provisioning.pm: "not responding
    to SSH, returning 'RELOAD'"), when currentimage.txt cannot be read or names another revision, or
    it is tainted; POST_LOAD only for a guest that answers with this revision and has no post-load
    recorded; READY when the guest answers and (where the management node can log in) post-load is
    recorded. ``probe_guest=False`` (blank masters in tests, simulated domains) stops at "running";
    the probe checks the guest's host key against ``host_keys`` (a mismatch: RELOAD)."""
    guest = host.lookup_guest(layout.domain_name)
    if guest is None:
        return NodeStatus.RELOAD
    cow = layout.cow_path
    if cow not in guest.disk_paths() or not os.path.exists(cow):
        return NodeStatus.RELOAD
    if guest.is_active():
        # A running guest's overlay is locked by QEMU; libvirt's live XML already names its backing
        # file, so the lock is never forced (no qemu-img -U on a disk in use).
        live = ParsedDomain.parse_or_none(guest.xml())
        backing = live.backing_file(cow) if live is not None else None
    else:
        try:
            inf = qemuimg.info(cow, layout.datastore_imagetype, timeout=info_timeout)
        except PermanentError as exc:
            log.warning("node_status: %s", exc)
            return NodeStatus.RELOAD
        backing = inf.full_backing_filename or inf.backing_filename
    if not backing or os.path.realpath(backing) != os.path.realpath(layout.master_path()):
        return NodeStatus.RELOAD
    if guest.power_status() not in (PowerState.ON, PowerState.BLOCKED):
        return NodeStatus.RELOAD  # off, paused, crashed: nothing answers SSH
    if not probe_guest:
        return NodeStatus.READY
    macs = guest.mac_addresses()
    return probe_status(host, guest.name, layout.reservation, macs[0] if macs else None, pin=host_keys)


__all__ = ["NodeStatus", "node_status", "remove_computer_domains", "remove_domain"]
