"""An isolated libvirt network with DHCP for real guests (tests, demo, benchmarks).

No ``<forward>``: guests reach only the host's bridge address and each other. STP off (no 30 s
listening delay on a new port) and dnsmasq's ``no-ping`` (it pings an address for 2-3 s before
offering it; the network is ours alone). The subnet is a random 10.x.y.0/24 neither routed on the host
nor used by another libvirt network.
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

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DHCP_FIRST, DHCP_LAST = 100, 199  # dynamic range; fixed (host-entry) addresses live below it


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
