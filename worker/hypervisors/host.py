"""One libvirt connection per process and URI (Nova's host.py), health-checked before reuse, reopened
after failures. It hands out :class:`Guest` objects; no caller sees a raw ``virDomain``.

All ``libvirt.libvirtError`` values are mapped into :mod:`worker.hypervisors.errors` by
:func:`map_libvirt_error`, the only place that looks at libvirt error codes for classification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import libvirt

from worker.hypervisors.domain_xml import parse_xml
from worker.hypervisors.errors import (
    AmbiguousDomainError,
    DomainNotFoundError,
    LibvirtPermanentError,
    LibvirtTransientError,
    PermanentError,
    ProvisioningError,
)
from worker.hypervisors.guest import Guest

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
    }
)
_RPC_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
# Codes that mean "the connection itself is gone" wherever they come from.
_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})

_handler_lock = threading.Lock()
_handler_registered = False


def _register_noop_error_handler() -> None:
    """Stop libvirt printing every error to stderr (we raise typed errors instead)."""
    global _handler_registered
    with _handler_lock:
        if not _handler_registered:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_registered = True


def is_transient_libvirt_error(exc: libvirt.libvirtError) -> bool:
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    return (code in _TRANSIENT_CODES and domain in _RPC_DOMAINS) or code in _CONNECTION_CODES


def map_libvirt_error(exc: libvirt.libvirtError, context: str = "") -> ProvisioningError:
    """Translate a libvirtError into the typed hierarchy (NO_DOMAIN / transient RPC / permanent)."""
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    text = exc.get_error_message() or str(exc)
    prefix = f"{context}: " if context else ""
    msg = f"{prefix}{text} (libvirt code {code}, domain {domain})"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFoundError(msg)
    if is_transient_libvirt_error(exc):
        return LibvirtTransientError(msg)
    return LibvirtPermanentError(msg)


class LibvirtHost:
    """Lazily opened, liveness-checked (``getLibVersion``) libvirt connection wrapper."""

    def __init__(self, uri: str, opener: Callable[[str], Any] | None = None) -> None:
        self.uri = uri
        self._opener = opener or libvirt.open
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    # ------------------------------------------------------------------ connection
    def connection(self) -> libvirt.virConnect:
        """The live ``virConnect``; reopened if the cached one fails its ping."""
        with self._lock:
            if self._pid != os.getpid():  # never reuse a connection across fork
                self._conn = None
                self._pid = os.getpid()
            if self._conn is not None:
                try:
                    self._conn.getLibVersion()
                    return self._conn
                except libvirt.libvirtError as exc:
                    log.warning("libvirt connection to %s is broken (%s); reopening", self.uri, exc)
                    self._drop()
            _register_noop_error_handler()
            try:
                conn = self._opener(self.uri)
            except libvirt.libvirtError as exc:
                raise LibvirtTransientError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            if conn is None:
                raise LibvirtTransientError(f"cannot connect to libvirt at {self.uri}")
            self._conn = conn
            return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    @contextlib.contextmanager
    def errors(self, context: str = "") -> Iterator[None]:
        """Map libvirtError raised inside the block; drop the connection on transient errors."""
        try:
            yield
        except libvirt.libvirtError as exc:
            mapped = map_libvirt_error(exc, context)
            if isinstance(mapped, LibvirtTransientError):
                with self._lock:
                    self._drop()
            raise mapped from exc

    def call(self, context: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(conn)`` with error mapping."""
        with self.errors(context):
            return fn(self.connection())

    # ------------------------------------------------------------------ facts
    def hypervisor_type(self) -> str:
        return self.call("getType", lambda c: str(c.getType()))

    def capabilities_xml(self) -> str:
        return self.call("getCapabilities", lambda c: str(c.getCapabilities()))

    def offers_domain_type(self, domain_type: str, arch: str | None = None) -> bool:
        root = parse_xml(self.capabilities_xml())
        for guest in root.findall("guest"):
            a = guest.find("arch")
            if a is None or (arch is not None and a.get("name") != arch):
                continue
            if any(d.get("type") == domain_type for d in a.findall("domain")):
                return True
        return False

    def has_network(self, name: str) -> bool:
        return self.call("listAllNetworks", lambda c: any(n.name() == name for n in c.listAllNetworks(0)))

    # ------------------------------------------------------------------ guests
    def list_guests(self) -> list[Guest]:
        return self.call("listAllDomains", lambda c: [Guest(self, d) for d in c.listAllDomains(0)])

    def lookup_guest(self, name: str) -> Guest | None:
        """The guest named ``name``, or None when no such domain is defined."""
        with self.errors(f"lookupByName({name})"):
            try:
                return Guest(self, self.connection().lookupByName(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

    def require_guest(self, name: str) -> Guest:
        guest = self.lookup_guest(name)
        if guest is None:
            raise DomainNotFoundError(f"domain {name!r} does not exist on {self.uri}")
        return guest

    def define(self, xml: str, *, autostart: bool = True) -> Guest:
        """``defineXML`` (a definition with the same UUID is updated in place), then autostart."""
        guest = self.call("defineXML", lambda c: Guest(self, c.defineXML(xml)))
        if autostart:
            try:
                guest.set_autostart(on=True)
            except PermanentError as exc:  # VCL: an autostart failure is only logged
                log.warning("autostart of %s failed: %s", guest.name, exc)
        return guest

    # ------------------------------------------------------------------ MAC addresses
    def used_macs(self) -> set[str]:
        """MACs of every defined domain (one that vanishes while listing is skipped)."""
        macs: set[str] = set()
        for guest in self.list_guests():
            with contextlib.suppress(PermanentError):
                macs.update(guest.mac_addresses())
        return macs

    def guest_by_mac(self, macs: set[str]) -> Guest:
        """The one guest with an interface MAC in ``macs`` (lowercase); capture finds its domain so."""
        found = []
        for guest in self.list_guests():
            with contextlib.suppress(DomainNotFoundError):  # undefined while we listed
                if macs & set(guest.mac_addresses()):
                    found.append(guest)
        wanted = ", ".join(sorted(macs))
        if not found:
            raise DomainNotFoundError(f"no domain on {self.uri} has MAC {wanted}")
        if len(found) > 1:
            raise AmbiguousDomainError(f"{len(found)} domains match MAC {wanted}: {[g.name for g in found]}")
        return found[0]


_hosts: dict[str, LibvirtHost] = {}
_hosts_lock = threading.Lock()


def get_host(uri: str) -> LibvirtHost:
    """One cached :class:`LibvirtHost` per process and URI."""
    with _hosts_lock:
        host = _hosts.get(uri)
        if host is None or host._pid != os.getpid():
            host = LibvirtHost(uri)
            _hosts[uri] = host
        return host


__all__ = ["LibvirtHost", "get_host", "is_transient_libvirt_error", "map_libvirt_error"]
