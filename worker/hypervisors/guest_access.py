"""How VCL reaches a loaded guest: its address, the proof that it answers, and post-load.

VCL connects to a VM at ``computer.privateIPaddress`` (the MAC is ``eth0macaddress``). On a libvirt
network with DHCP the worker pins that address with a DHCP host entry before the domain starts; on
a plain bridge the site's DHCP hands it out and we find it from libvirt (lease, then ARP). A
reservation is loaded only when the guest answers on its connect-method port (SSH: an ``SSH-2.0-``
banner) and the post-load step ran (in delegated mode vcld's OS module runs it, after the load): a
``running`` domain may still be in its BIOS, or have panicked.
Every SSH connection checks the guest's host key against the computer's pin (:mod:`.host_keys`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from worker.config import Settings
from worker.hypervisors import postload
from worker.hypervisors.context import OperationContext
from worker.hypervisors.domain_xml import NicSpec
from worker.hypervisors.errors import HostKeyMismatchError, PermanentError, TransientError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin
from worker.hypervisors.network import LibvirtNetwork, domain_ipv4_addresses
from worker.hypervisors.node_status import NodeStatus
from worker.hypervisors.readiness import SSH_PORT, GuestNotReadyError, wait_for_port
from worker.reservation import Reservation
from worker.timing import Stopwatch

log = logging.getLogger(__name__)

# Probe budget of node_status: long enough for a live guest to answer, short enough to poll.
STATUS_PROBE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class GuestAnswer:
    address: str
    port: int
    banner: str
    seconds: float  # from the start of the wait until the guest answered
    post_load_seconds: float = 0.0


def readiness_timeout(r: Reservation, settings: Settings) -> float:
    """VCL_READY_TIMEOUT, else the image's ``reloadtime`` (minutes; VCL's own load estimate)."""
    if settings.ready_timeout > 0:
        return float(settings.ready_timeout)
    return float(max(r.image_reloadtime_minutes, 1) * 60)


def pin_private_address(host: LibvirtHost, r: Reservation, eth0: NicSpec | None) -> bool:
    """Add the MAC → ``privateIPaddress`` DHCP host entry on eth0's libvirt network (idempotent).

    Returns False where it does not apply: no private address, a plain bridge, or a network without
    DHCP (the site's own DHCP then owns the address).
    """
    if eth0 is None or eth0.kind != "network" or not r.computer_private_ip:
        return False
    network = LibvirtNetwork.lookup(host, eth0.source)
    if not network.has_dhcp():
        return False
    network.ensure_dhcp_host(eth0.mac, r.computer_private_ip, r.computer_short_name)
    return True


def find_address(
    host: LibvirtHost, domain_name: str, r: Reservation, mac: str | None, deadline: float
) -> str:
    """The guest's address: ``privateIPaddress`` when VCL has one, else what libvirt learns of it."""
    if r.computer_private_ip:
        return r.computer_private_ip
    start = time.monotonic()
    while True:
        found = domain_ipv4_addresses(host, domain_name, mac)
        if found:
            return found[0]
        if time.monotonic() - start >= deadline:
            raise GuestNotReadyError(domain_name, r.readiness_port, deadline, "no address in leases or ARP")
        time.sleep(1.0)


def check_configuration(ctx: OperationContext) -> None:
    """Configuration errors of a load that waits for its guest, before anything is touched: the
    ``managementnode.keys`` files (:class:`~worker.hypervisors.errors.KeyFileError`)."""
    if ctx.settings.wait_for_guest and ctx.driver.boots_guests:
        postload.check_key_files(ctx.reservation)


def wait_until_reachable(ctx: OperationContext, mac: str | None) -> GuestAnswer:
    """Wait (bounded by :func:`readiness_timeout`) for the load's guest (NIC ``mac``) to answer on its
    connect port; no login yet."""
    r, settings, domain_name = ctx.reservation, ctx.settings, ctx.layout.domain_name
    budget = readiness_timeout(r, settings)
    start = time.monotonic()  # the budget's start: a deadline, not a step timing
    address = find_address(ctx.host, domain_name, r, mac, budget)
    ready = wait_for_port(address, r.readiness_port, deadline=max(budget - (time.monotonic() - start), 1.0))
    answered = time.monotonic() - start
    log.info(
        "%s answered on %s:%s after %.1f s %s", domain_name, address, r.readiness_port, answered, ready.banner
    )
    return GuestAnswer(address, r.readiness_port, ready.banner, round(answered, 3))


def run_post_load(
    ctx: OperationContext,
    answer: GuestAnswer,
    *,
    mode: HostKeyMode,
    first: postload.SessionStep | None = None,
) -> GuestAnswer:
    """Post-load on the answering guest (retried within what is left of the readiness budget);
    ``first`` runs in the guest before it, on post-load's own SSH session where post-load is ``ssh``.
    The guest's host key is pinned (``mode`` PIN: a cold boot) or verified (VERIFY) first."""
    r = ctx.reservation
    pin = HostKeyPin.for_reservation(ctx.settings, r, mode)
    left = readiness_timeout(r, ctx.settings) - answer.seconds
    post = _run_post_load(r, answer, ctx.settings, time.monotonic() + max(left, 10.0), (pin, first))
    return dataclasses.replace(answer, post_load_seconds=round(post, 3))


def wait_until_answering(
    ctx: OperationContext, mac: str | None, *, mode: HostKeyMode, first: postload.SessionStep | None = None
) -> GuestAnswer:
    """:func:`wait_until_reachable`, then :func:`run_post_load`."""
    return run_post_load(ctx, wait_until_reachable(ctx, mac), mode=mode, first=first)


def _run_post_load(
    r: Reservation,
    answer: GuestAnswer,
    settings: Settings,
    deadline: float,
    how: tuple[HostKeyPin, postload.SessionStep | None],
) -> float:
    pin, first = how
    address = answer.address
    step = postload.resolve_post_load(settings.post_load)
    watch = Stopwatch()
    while True:
        try:
            if step is postload.ssh_post_load and (r.management_node_keys or answer.port != SSH_PORT):
                postload.ssh_post_load(r, address, first, host_keys=pin)  # one login for all
            else:
                if answer.port == SSH_PORT:
                    # The key checked on a handshake of its own, before any other login (a site's hook).
                    postload.check_host_key(address, SSH_PORT, pin)
                if first is not None:
                    _first_alone(r, address, first, pin)
                if step is not None:
                    step(r, address)
            return watch.elapsed()
        except TransientError as exc:
            # sshd may answer its banner a moment before it accepts logins: retry within the budget.
            if time.monotonic() >= deadline:
                raise postload.PostLoadError(
                    f"post-load on {address} failed until the deadline: {exc}"
                ) from exc
            time.sleep(1.0)


def _first_alone(r: Reservation, address: str, first: postload.SessionStep, pin: HostKeyPin) -> None:
    """``first`` on a session of its own (post-load is not ``ssh``): best effort, as it adds to a
    post-load that does not log in itself; a host key mismatch is never swallowed."""
    try:
        postload.in_session(r, address, first, host_keys=pin)
    except HostKeyMismatchError:
        raise
    except (TransientError, PermanentError) as exc:
        log.warning("%s: no SSH session before post-load: %s", address, exc)


def probe_status(
    host: LibvirtHost, domain_name: str, r: Reservation, mac: str | None, *, pin: HostKeyPin | None
) -> NodeStatus:
    """For node_status, VCL's Provisioning.pm verdicts: RELOAD when the guest does not answer on its
    port, cannot be logged in to, has no currentimage.txt, says it holds another revision or was
    tainted, or presents another host key than the one pinned (``pin``, in VERIFY mode); POST_LOAD
    when it holds this revision without post-load recorded; else READY."""
    try:
        address = find_address(host, domain_name, r, mac, STATUS_PROBE_SECONDS)
        wait_for_port(address, r.readiness_port, deadline=STATUS_PROBE_SECONDS)
    except GuestNotReadyError as exc:
        log.info("node_status: %s does not answer: %s", domain_name, exc)
        return NodeStatus.RELOAD
    try:
        recorded = postload.read_currentimage(r, address, host_keys=pin)
    except HostKeyMismatchError as exc:
        log.warning("node_status: %s: %s", domain_name, exc)
        return NodeStatus.RELOAD
    except (TransientError, PermanentError) as exc:
        # VCL's is_ssh_responding logs in; a guest it cannot log in to is reloaded.
        log.info("node_status: %s answers but currentimage.txt cannot be read: %s", domain_name, exc)
        return NodeStatus.RELOAD
    if not r.management_node_keys:
        return NodeStatus.READY  # no identity to look inside with: answering is all VCL could check either
    if recorded is None or recorded.get("imagerevision_id") != str(r.imagerevision_id):
        return NodeStatus.RELOAD
    if postload.TAINTED_MARK in recorded:
        return NodeStatus.RELOAD
    return NodeStatus.READY if postload.POST_LOAD_MARK in recorded else NodeStatus.POST_LOAD


__all__ = [
    "GuestAnswer",
    "check_configuration",
    "find_address",
    "pin_private_address",
    "probe_status",
    "readiness_timeout",
    "run_post_load",
    "wait_until_answering",
    "wait_until_reachable",
]
