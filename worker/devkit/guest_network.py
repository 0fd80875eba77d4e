"""An isolated libvirt network with DHCP for real guests (tests, demo, benchmarks).

No ``<forward>``: guests reach only the host's bridge address and each other. STP off (no 30 s
listening delay on a new port) and dnsmasq's ``no-ping`` (it pings an address for 2-3 s before
offering it; the network is ours alone). The subnet is a random 10.x.y.0/24 neither routed on the host
nor used by another libvirt network.

The tests' view of a :class:`~worker.hypervisors.network.LibvirtNetwork` the product does not need
(whether it runs, its leases, dropping a reservation) lives here too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
import struct
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from worker.hypervisors.network import LibvirtNetwork, normalize_mac

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DHCP_FIRST, DHCP_LAST = 100, 199  # dynamic range; fixed (host-entry) addresses live below it


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    hostname: str | None
    expiry: int  # seconds since the epoch


@dataclass(frozen=True)
class DhcpNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network

    def host_ip(self, n: int) -> str:
        """Address ``n`` of the subnet (``.1`` is the host's bridge)."""
        return str(self.subnet.network_address + n)

    @property
    def prefix(self) -> str:
        """``10.x.y.`` (for VCL site seeding: computer.privateIPaddress = prefix + n)."""
        return self.host_ip(0).rsplit(".", 1)[0] + "."


def routed_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 destinations of the host's routing table (/proc/net/route, little-endian hex)."""
    nets = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        f = line.split()
        dest = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<I", int(f[7], 16)))
        if mask != "0.0.0.0":  # noqa: S104 (a netmask, not a listen address: skip default routes)
            nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return nets


def free_subnet(conn: Any) -> ipaddress.IPv4Network:
    taken = routed_networks()
    for net in conn.listAllNetworks(0):
        for ip in ET.fromstring(net.XMLDesc(0)).iter("ip"):  # noqa: S314 (libvirt's own XML)
            if ip.get("address") and ip.get("family", "ipv4") == "ipv4":
                prefix = ip.get("prefix") or ip.get("netmask") or "24"
                taken.append(ipaddress.IPv4Network(f"{ip.get('address')}/{prefix}", strict=False))
    rng = random.SystemRandom()
    for _ in range(200):
        cand = ipaddress.IPv4Network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise RuntimeError("no free 10.x.y.0/24 for a test network")


def network_xml(name: str, bridge: str, subnet: ipaddress.IPv4Network) -> str:
    ET.register_namespace("dnsmasq", DNSMASQ_NS)
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "bridge", {"name": bridge, "stp": "off", "delay": "0"})
    ip = ET.SubElement(
        root, "ip", {"address": str(subnet.network_address + 1), "netmask": str(subnet.netmask)}
    )
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(
        dhcp,
        "range",
        {"start": str(subnet.network_address + DHCP_FIRST), "end": str(subnet.network_address + DHCP_LAST)},
    )
    opts = ET.SubElement(root, f"{{{DNSMASQ_NS}}}options")
    ET.SubElement(opts, f"{{{DNSMASQ_NS}}}option", {"value": "no-ping"})
    return ET.tostring(root, encoding="unicode")


def create_dhcp_network(conn: Any, prefix: str = "vclg-net") -> DhcpNetwork:
    """Define and start a fresh isolated DHCP network; remove it with :func:`remove_network`."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    bridge = "vg" + uuid.uuid4().hex[:10]  # 12 characters: Linux allows 15
    subnet = free_subnet(conn)
    net = conn.networkDefineXML(network_xml(name, bridge, subnet))
    try:
        net.create()
    except libvirt.libvirtError:
        net.undefine()
        raise
    return DhcpNetwork(name, bridge, subnet)


def remove_network(conn: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        net = conn.networkLookupByName(name)
        with contextlib.suppress(libvirt.libvirtError):
            if net.isActive():
                net.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            net.undefine()


def _virnet(conn: libvirt.virConnect, net: LibvirtNetwork) -> Any:
    return conn.networkLookupByName(net.name)


def network_is_active(net: LibvirtNetwork) -> bool:
    return bool(net.host.call(f"network {net.name} isActive", lambda c: _virnet(c, net).isActive()))


def remove_dhcp_host(net: LibvirtNetwork, mac: str) -> bool:
    """Drop the reservation of ``mac`` from the running network and its definition; False when
    there was none."""
    mac = normalize_mac(mac)
    found = [h for h in net.dhcp_hosts() if h.mac == mac]
    if not found:
        return False
    el = ET.Element("host", {"mac": found[0].mac, "ip": found[0].ip})
    if found[0].name:
        el.set("name", found[0].name)
    xml = ET.tostring(el, encoding="unicode")

    def delete(conn: libvirt.virConnect) -> None:
        vnet = _virnet(conn, net)
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if vnet.isPersistent() else 0
        if vnet.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        command, section = libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST
        vnet.update(command, section, -1, xml, flags)

    net.host.call(f"network {net.name} delete dhcp host {mac}", delete)
    return True


def leases(net: LibvirtNetwork, mac: str | None = None) -> list[Lease]:
    """Current IPv4 DHCP leases of the network, only those of ``mac`` when given."""
    wanted = normalize_mac(mac) if mac else None
    rows = net.host.call(f"network {net.name} DHCPLeases", lambda c: _virnet(c, net).DHCPLeases(wanted, 0))
    return [
        Lease(normalize_mac(r["mac"]), r["ipaddr"], r.get("hostname") or None, int(r.get("expirytime", 0)))
        for r in rows or []
        if r.get("type", libvirt.VIR_IP_ADDR_TYPE_IPV4) == libvirt.VIR_IP_ADDR_TYPE_IPV4
    ]
