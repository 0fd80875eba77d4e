"""libvirt networks as the guest sees them: DHCP reservations (MAC -> IP) and a domain's address.

VCL gives every computer a fixed private address (``computer.privateIPaddress``) and MAC
(``eth0macaddress``); on a libvirt network with DHCP the guest gets that address when the network
holds a ``<host mac ip>`` entry for it. On a plain host bridge there is no libvirt DHCP to ask, and
the address is found from the lease table or, failing that, the host's ARP cache.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import libvirt

from worker.hypervisors.domain_xml import parse_xml
from worker.hypervisors.errors import InvalidInputError, NetworkNotFoundError, PermanentError
from worker.hypervisors.host import LibvirtHost


class DhcpConflictError(PermanentError):
    """The address is reserved for another MAC of another name: refusing to take it over."""


class DhcpChange(StrEnum):
    """What :meth:`LibvirtNetwork.ensure_dhcp_host` did; equal to its plain strings."""

    UNCHANGED = "unchanged"
    ADDED = "added"
    MODIFIED = "modified"


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    ip: str
    name: str | None


def normalize_mac(mac: str) -> str:
    parts = mac.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise InvalidInputError(f"not a MAC address: {mac!r}")
    return ":".join(parts)


def _ipv4(ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip.strip()))
    except ValueError as exc:
        raise InvalidInputError(f"not an IPv4 address: {ip!r}") from exc


class LibvirtNetwork:
    """One libvirt network, looked up by name; every call goes through :class:`LibvirtHost`."""

    def __init__(self, host: LibvirtHost, name: str) -> None:
        self.host = host
        self.name = name

    @classmethod
    def lookup(cls, host: LibvirtHost, name: str) -> LibvirtNetwork:
        net = cls(host, name)
        net._net()  # raises NetworkNotFoundError now rather than on first use
        return net

    def _net(self) -> Any:
        def find(conn: Any) -> Any:
            try:
                return conn.networkLookupByName(self.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return None
                raise

        net = self.host.call(f"networkLookupByName({self.name})", find)
        if net is None:
            raise NetworkNotFoundError(f"libvirt network {self.name!r} does not exist")
        return net

    def _xml(self, *, inactive: bool = False) -> ET.Element:
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0
        return parse_xml(
            self.host.call(f"network {self.name} XMLDesc", lambda _c: self._net().XMLDesc(flags))
        )

    def uuid(self) -> str:
        """The network's UUID: a network deleted and made again under the same name has another."""
        return self.host.call(f"network {self.name} UUIDString", lambda _c: str(self._net().UUIDString()))

    def bridge(self) -> str | None:
        el = self._xml().find("bridge")
        return None if el is None else el.get("name")

    def has_dhcp(self) -> bool:
        """True when an IPv4 ``<ip>`` of the network serves DHCP."""
        return any(
            ip.find("dhcp") is not None and ip.get("family", "ipv4") == "ipv4"
            for ip in self._xml().iter("ip")
        )

    def dhcp_hosts(self, *, inactive: bool = False) -> list[DhcpHost]:
        out = []
        for host in self._xml(inactive=inactive).iterfind("ip/dhcp/host"):
            mac, ip = host.get("mac"), host.get("ip")
            if mac and ip:
                out.append(DhcpHost(normalize_mac(mac), ip, host.get("name")))
        return out

    def _update(self, command: int, entry: DhcpHost) -> None:
        el = ET.Element("host", {"mac": entry.mac, "ip": entry.ip})
        if entry.name:
            el.set("name", entry.name)
        xml = ET.tostring(el, encoding="unicode")

        def update(_conn: Any) -> None:
            net = self._net()
            flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if net.isPersistent() else 0
            if net.isActive():
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            # parentIndex -1: libvirt picks the <ip> whose subnet holds the address.
            net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)

        self.host.call(f"network {self.name} update dhcp host {entry.mac}", update)

    def ensure_dhcp_host(self, mac: str, ip: str, name: str | None = None) -> DhcpChange:
        """Reserve ``ip`` for ``mac``; idempotent. Returns what it changed.

        Applied to the running network and its persistent definition alike.
        """
        want = DhcpHost(normalize_mac(mac), _ipv4(ip), name)
        if not self.has_dhcp():
            raise InvalidInputError(f"libvirt network {self.name!r} has no DHCP (<ip><dhcp>)")
        hosts = self.dhcp_hosts()
        for other in hosts:
            if other.ip == want.ip and other.mac != want.mac:
                if not (name and other.name == name):
                    raise DhcpConflictError(
                        f"{want.ip} is reserved for {other.mac} ({other.name}) on network {self.name}"
                    )
                # Same computer name with a new MAC: the old reservation is stale.
                self._update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, other)
        mine = [h for h in hosts if h.mac == want.mac]
        if not mine:
            self._update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, want)
            return DhcpChange.ADDED
        if mine[0].ip == want.ip and (name is None or mine[0].name == name):
            return DhcpChange.UNCHANGED
        self._update(libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY, want)
        return DhcpChange.MODIFIED


def network_states(host: LibvirtHost) -> dict[str, bool]:
    """Every libvirt network defined on the host (``virsh net-list --all``), name -> active."""
    return host.call(
        "listAllNetworks", lambda c: {str(n.name()): bool(n.isActive()) for n in c.listAllNetworks(0)}
    )


def domain_ipv4_addresses(host: LibvirtHost, domain_name: str, mac: str | None = None) -> list[str]:
    """The domain's IPv4 addresses: from DHCP leases first, else from the host's ARP cache.

    Lease lookup only knows libvirt networks; ARP also covers a plain host bridge (the guest must
    have sent traffic). Restricted to the NIC with ``mac`` when given.
    """
    wanted = normalize_mac(mac) if mac else None
    sources = (
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    )
    for source in sources:

        def query(conn: Any, source: int = source) -> dict[str, Any]:
            dom = conn.lookupByName(domain_name)
            try:
                return dict(dom.interfaceAddresses(source, 0) or {})
            except libvirt.libvirtError as exc:
                # ARP/lease queries are unsupported on some interface types: try the next source.
                if exc.get_error_code() in (
                    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                ):
                    return {}
                raise

        found: list[str] = []
        for iface in host.call(f"interfaceAddresses({domain_name})", query).values():
            hw = iface.get("hwaddr")
            if wanted and (not hw or normalize_mac(hw) != wanted):
                continue
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and addr.get("addr"):
                    found.append(str(addr["addr"]))
        if found:
            return found
    return []
