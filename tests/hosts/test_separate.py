"""Host B's libvirtd is a host of its own: what is defined on one host is not on the other, its
daemons are not the ones ``pgrep -x libvirtd`` or ``/run/libvirtd.pid`` name, and it cannot see the
first host's datastores."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from worker.devkit.libvirt_env import IMAGES_ROOT, connect, ensure_isolated_network, remove_network
from worker.devkit.second_host import SecondHost

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(300)]


def _domain_xml(name: str) -> str:
    root = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = "64"
    ET.SubElement(ET.SubElement(root, "os"), "type").text = "hvm"
    return ET.tostring(root, encoding="unicode")


def _names(conn: libvirt.virConnect) -> tuple[set[str], set[str]]:
    return {d.name() for d in conn.listAllDomains(0)}, {n.name() for n in conn.listAllNetworks(0)}


def test_definitions_stay_on_their_host(host_b_machine: SecondHost) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = connect(), host_b_machine.conn()
    on_a, on_b = f"vclhb-a-{tag}", f"vclhb-b-{tag}"
    try:
        a.defineXML(_domain_xml(on_a))
        b.defineXML(_domain_xml(on_b))
        ensure_isolated_network(on_a)
        ensure_isolated_network(on_b, uri=host_b_machine.uri)
        doms_a, nets_a = _names(a)
        doms_b, nets_b = _names(b)
        assert on_a in doms_a and on_a not in doms_b
        assert on_b in doms_b and on_b not in doms_a
        assert on_a in nets_a and on_a not in nets_b
        assert on_b in nets_b and on_b not in nets_a
        # Host A's domains are not host B's (the copy of /etc/libvirt left them out).
        assert not doms_b & doms_a
        # B's network's bridge lives in B's network namespace only.
        bridge = ET.fromstring(b.networkLookupByName(on_b).XMLDesc(0)).find("bridge")
        assert bridge is not None
        assert not Path(f"/sys/class/net/{bridge.get('name')}").exists()
        assert host_b_machine.run(["ip", "link", "show", str(bridge.get("name"))]).returncode == 0
    finally:
        for conn, name in ((a, on_a), (b, on_b)):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).undefine()
        remove_network(on_a)
        remove_network(on_b, uri=host_b_machine.uri)
        a.close()
        b.close()


def test_daemons_are_not_the_first_hosts(host_b_machine: SecondHost) -> None:
    pid_a = int(Path("/run/libvirtd.pid").read_text().strip())
    pid_b = int((host_b_machine.root / "libvirtd.pid").read_text().strip())
    assert pid_a != pid_b
    assert Path(f"/proc/{pid_b}/comm").read_text().strip() == "vcl-libvirtd"
    assert pid_b in host_b_machine.processes() and pid_a not in host_b_machine.processes()
    # What scripts/start-libvirtd.sh and setup-host.sh look for names the first host's daemons only.
    for name in ("libvirtd", "virtlogd"):
        found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
        assert not {int(p) for p in found} & set(host_b_machine.processes()), name


def test_first_hosts_datastores_are_invisible(host_b_machine: SecondHost, tmp_path: Path) -> None:
    marker = IMAGES_ROOT / f"vcl-worker-hosts-marker-{uuid.uuid4().hex[:8]}"
    marker.write_text("host A")
    try:
        seen = host_b_machine.run(["ls", "-a", str(IMAGES_ROOT)])
        assert seen.returncode == 0, seen.stderr
        assert marker.name not in seen.stdout.split()
        assert host_b_machine.run(["cat", str(marker)]).returncode != 0
    finally:
        marker.unlink()
