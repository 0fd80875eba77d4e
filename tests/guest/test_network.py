"""network.LibvirtNetwork on a real isolated libvirt network: DHCP reservations live + config."""

from __future__ import annotations

import pytest

from tests.guest import env
from worker.devkit import guest_network
from worker.hypervisors.errors import InvalidInputError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.network import DhcpConflictError, LibvirtNetwork, NetworkNotFoundError

pytestmark = pytest.mark.guest


def test_lookup_missing_network(host: LibvirtHost) -> None:
    with pytest.raises(NetworkNotFoundError):
        LibvirtNetwork.lookup(host, env.unique("vclg-none"))


def test_dhcp_host_is_idempotent_live_and_config(host: LibvirtHost, network: env.TestNetwork) -> None:
    net = LibvirtNetwork.lookup(host, network.name)
    assert net.has_dhcp() and guest_network.network_is_active(net) and net.bridge() == network.bridge
    mac, ip, ip2 = "52:54:00:AA:00:01", network.host_ip(201), network.host_ip(202)
    try:
        assert net.ensure_dhcp_host(mac, ip, "vm-a") == "added"
        assert net.ensure_dhcp_host(mac.lower(), ip, "vm-a") == "unchanged"
        assert net.ensure_dhcp_host(mac, ip2, "vm-a") == "modified"
        for inactive in (False, True):  # the running network and its persistent definition
            mine = [h for h in net.dhcp_hosts(inactive=inactive) if h.mac == mac.lower()]
            assert [(h.ip, h.name) for h in mine] == [(ip2, "vm-a")]
        with pytest.raises(DhcpConflictError):
            net.ensure_dhcp_host("52:54:00:aa:00:02", ip2, "vm-b")
        # The same computer with a new MAC takes its address over.
        assert net.ensure_dhcp_host("52:54:00:aa:00:03", ip2, "vm-a") == "added"
        assert [h.mac for h in net.dhcp_hosts() if h.ip == ip2] == ["52:54:00:aa:00:03"]
        with pytest.raises(InvalidInputError):
            net.ensure_dhcp_host("not-a-mac", ip, "x")
        with pytest.raises(InvalidInputError):
            net.ensure_dhcp_host(mac, "10.0.0.300", "x")
    finally:
        for m in (mac, "52:54:00:aa:00:03"):
            guest_network.remove_dhcp_host(net, m)
    assert not [h for h in net.dhcp_hosts(inactive=True) if h.ip in (ip, ip2)]
    assert guest_network.leases(net, "52:54:00:aa:00:01") == []
