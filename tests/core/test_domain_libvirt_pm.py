"""The domain XML where libvirt.pm:generate_domain_xml's choices matter to a real guest (issue 19):
``<cpu>`` (host-model under kvm, a usable named model under TCG), the vCPU topology, the lifecycle
actions, the NICs ``image.project`` adds, and the MACs a vmprofile's ``eth<n>generated`` makes.

Pure checks run on the XML and on libvirt's test driver; the ``real`` ones define and start domains
on qemu:///system and read back what libvirt accepted; the ``guest`` one boots the Debian kernel of
the test guest with 4 vCPUs on 2 sockets and counts them inside it.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import RUN_ID, Env
from worker.devkit import libvirt_env
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork
from worker.devkit.reservations import make_reservation
from worker.hypervisors import cpu_model, postload
from worker.hypervisors import domain_xml as dx
from worker.hypervisors.domain_spec import (
    PROJECT_MAC_PREFIX,
    ProjectNetworks,
    cpu_for,
    domain_spec,
    project_networks,
)
from worker.hypervisors.errors import ConfigurationError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("count", "topology"),
    [(0, (1, 1, 1)), (1, (1, 1, 1)), (2, (2, 1, 1)), (3, (1, 3, 1)), (4, (2, 2, 1)), (5, (1, 5, 1)),
     (6, (2, 3, 1)), (8, (2, 4, 1)), (16, (2, 8, 1))],
)  # fmt: skip
def test_topology_is_libvirt_pm_arithmetic(count: int, topology: tuple[int, int, int]) -> None:
    """libvirt.pm: ``count`` sockets up to 2, else 2 sockets x count/2 cores; an odd count above 2
    (VCL's one-short topology, which libvirt refuses) is 1 socket x count cores."""
    assert cpu_model.vcpu_topology(count) == topology
    sockets, cores, threads = topology
    assert sockets * cores * threads == max(count, 1) and sockets <= 2


def test_cpu_by_domain_type() -> None:
    assert cpu_model.cpu_spec("kvm") == dx.CpuSpec(mode="host-model", fallback="allow")
    assert cpu_model.cpu_spec("qemu", frozenset({"qemu64", "Nehalem", "Penryn"})) == dx.CpuSpec(
        mode="custom", model="Nehalem", fallback="forbid"
    )
    assert cpu_model.cpu_spec("qemu", frozenset({"qemu64"})).model == "qemu64"
    # capabilities unknown: QEMU's own TCG default, and libvirt may fall back
    assert cpu_model.cpu_spec("qemu", None) == dx.CpuSpec(mode="custom", model="qemu64", fallback="allow")
    assert cpu_model.cpu_spec("test") == dx.CpuSpec()


def test_usable_models_read_from_domain_capabilities() -> None:
    caps = ET.fromstring(
        "<domainCapabilities><cpu>"
        "<mode name='host-passthrough' supported='no'/>"
        "<mode name='custom' supported='yes'>"
        "<model usable='yes' vendor='unknown'>qemu64</model>"
        "<model usable='no' vendor='Intel'>Haswell</model>"
        "<model usable='yes' vendor='Intel'>Westmere</model>"
        "</mode></cpu></domainCapabilities>"
    )
    assert cpu_model.usable_models(caps) == {"qemu64", "Westmere"}
    assert cpu_model.usable_models(ET.fromstring("<domainCapabilities/>")) == frozenset()


def _spec(**kw: object) -> dx.DomainSpec:
    base: dict[str, object] = dict(
        name="pm1", uuid=dx.computer_uuid(1, "pm1"), domain_type="kvm", memory_mib=512, vcpus=4,
        disk_path="/x/pm1.qcow2", cpu=cpu_model.cpu_spec("kvm"),
    )  # fmt: skip
    base.update(kw)
    return dx.DomainSpec(**base)  # type: ignore[arg-type]


def test_kvm_xml_has_libvirt_pm_cpu_topology_and_lifecycle(tmp_path: Path) -> None:
    xml = dx.build_domain_xml(_spec())
    root = ET.fromstring(xml)
    cpu = root.find("cpu")
    assert cpu is not None and cpu.attrib == {"mode": "host-model"}
    model = cpu.find("model")
    assert model is not None and model.attrib == {"fallback": "allow"} and not model.text
    topology = cpu.find("topology")
    assert topology is not None and topology.attrib == {"sockets": "2", "cores": "2", "threads": "1"}
    assert root.findtext("vcpu") == "4"
    # libvirt.pm: preserve / restart / preserve; libvirt's QEMU driver refuses preserve on poweroff
    assert [root.findtext(k) for k in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy",
        "restart",
        "preserve",
    ]
    parsed = dx.ParsedDomain.parse(xml)
    assert parsed.cpu == dx.DomainCpu(mode="host-model", model=None, sockets=2, cores=2, threads=1)
    assert (parsed.vcpus, parsed.on_poweroff, parsed.on_reboot, parsed.on_crash) == (
        4,
        "destroy",
        "restart",
        "preserve",
    )
    libvirt_env.validate_domain_xml(xml, tmp_path)
    tcg = dx.build_domain_xml(_spec(domain_type="qemu", vcpus=3, cpu=cpu_model.cpu_spec("qemu", None)))
    assert dx.ParsedDomain.parse(tcg).cpu == dx.DomainCpu(
        mode="custom", model="qemu64", sockets=1, cores=3, threads=1
    )
    libvirt_env.validate_domain_xml(tcg, tmp_path)


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        ("vcl", ProjectNetworks(None, ())),
        ("VCL", ProjectNetworks(None, ())),
        # no 'vcl' in it: the first match carries the public NIC, the others are extra NICs
        ("hpc", ProjectNetworks("hpc", ("hpcnet",))),
        # 'vcl' in it: the public NIC stays on virtualswitch1, every match is an extra NIC ('hpcnet'
        # neither contains 'vclhpc' nor is contained in it)
        ("vclhpc", ProjectNetworks(None, ("hpc", "vcl"))),
    ],
)
def test_project_networks_as_libvirt_pm(project: str, expected: ProjectNetworks) -> None:
    networks = ["default", "hpcnet", "hpc", "vcl", "Public", "other"]
    # the vmprofile's own switches never count, compared case-insensitively
    assert project_networks(project, networks, ("DEFAULT", "public")) == expected


def test_project_networks_name_contained_in_the_project() -> None:
    assert project_networks("hpc", ["HPC"], ("a", "")) == ProjectNetworks("HPC", ())
    assert project_networks("vclhpc", ["hp"], ("a", "b")) == ProjectNetworks(None, ("hp",))
    assert project_networks("hpc", ["default"], ("a", "b")) == ProjectNetworks(None, ())


def test_generated_macs_of_a_spec() -> None:
    nics = (
        dx.NicSpec("network", "a", "52:54:00:00:00:01", computer_nic="eth0", generated=True),
        dx.NicSpec("network", "b", "52:54:00:00:00:02", computer_nic="eth1"),
        dx.NicSpec("network", "c", "00:0c:29:00:00:03", generated=True),
    )
    assert _spec(nics=nics).generated_macs == dx.GeneratedMacs(eth0="52:54:00:00:00:01")
    assert not _spec(nics=nics[1:]).generated_macs


# --------------------------------------------------------------------------- libvirt's test driver


@pytest.fixture
def test_host() -> Iterator[tuple[LibvirtHost, str]]:
    """test:///default with networks ``vclhpc<tag>a``/``b`` (active) and ``vclhpc<tag>c`` (defined
    only): each matches both project 'hpc' and project 'vclhpc'."""
    host = LibvirtHost("test:///default")
    tag = uuid.uuid4().hex[:6]
    conn = host.connection()
    made = []
    for suffix, active in (("a", True), ("b", True), ("c", False)):
        xml = f"<network><name>vclhpc{tag}{suffix}</name><bridge name='t{tag}{suffix}'/></network>"
        net = conn.networkDefineXML(xml)
        if active:
            net.create()
        made.append(net)
    yield host, tag
    for net in made:
        if net.isActive():
            net.destroy()
        net.undefine()


def _test_spec(
    host: LibvirtHost, tmp_path: Path, vmprofile: dict[str, Any] | None = None, **kw: Any
) -> dx.DomainSpec:
    vp = {
        "datastore_path": str(tmp_path / "ds"),
        "vm_path": str(tmp_path / "vms"),
        "virtualswitch1": "default",
    }
    vp.update(vmprofile or {})
    layout = Layout(make_reservation(vmprofile=vp, **kw), roots=[str(tmp_path)])
    return domain_spec(host, layout, domain_type="test", disk_driver_name="qemu", vnc_listen="127.0.0.1")


def _nics(spec: dx.DomainSpec) -> list[tuple[str, str | None]]:
    return [(n.source, n.computer_nic) for n in spec.nics]


def test_project_nics_on_the_test_driver(test_host: tuple[LibvirtHost, str], tmp_path: Path) -> None:
    host, tag = test_host
    r = make_reservation()
    eth0, eth1 = r.eth0_mac, r.eth1_mac
    # project 'vcl': the vmprofile's two NICs, the computer's MACs
    spec = _test_spec(host, tmp_path)
    assert _nics(spec) == [("default", "eth0"), ("default", "eth1")]
    assert [n.mac for n in spec.nics] == [eth0, eth1] and not spec.generated_macs
    # 'hpc' (with an inactive match, defined only): a clear error naming the image, project, network
    with pytest.raises(
        ConfigurationError, match=rf"network 'vclhpc{tag}c' .*not active.*image.project 'hpc'"
    ):
        _test_spec(host, tmp_path, image_project="hpc")
    host.connection().networkLookupByName(f"vclhpc{tag}c").create()
    # 'hpc': the public NIC (eth1's MAC) on the first project network, one extra NIC per other match
    spec = _test_spec(host, tmp_path, image_project="hpc")
    project = [f"vclhpc{tag}{suffix}" for suffix in "abc"]
    assert _nics(spec)[:2] == [("default", "eth0"), (project[0], "eth1")]
    assert spec.nics[1].mac == eth1 and spec.nics[1].kind == "network"
    extra = spec.nics[2:]
    assert {n.source for n in extra} >= set(project[1:])  # other 'hpc' networks of the process too
    assert all(n.mac.startswith(PROJECT_MAC_PREFIX + ":") and n.computer_nic is None for n in extra)
    assert len({n.mac for n in spec.nics}) == len(spec.nics)
    # 'vclhpc': eth1 stays on virtualswitch1, every project network is an extra NIC
    spec = _test_spec(host, tmp_path, image_project="vclhpc")
    assert _nics(spec)[:2] == [("default", "eth0"), ("default", "eth1")]
    assert {n.source for n in spec.nics[2:]} >= set(project)


def test_generated_macs_on_the_test_driver(test_host: tuple[LibvirtHost, str], tmp_path: Path) -> None:
    host, _tag = test_host
    r = make_reservation()
    spec = _test_spec(host, tmp_path, vmprofile={"eth0_generated": True})
    eth0, eth1 = spec.nics
    assert eth0.generated and eth0.mac != r.eth0_mac and eth0.mac.startswith("52:54:00:")
    assert not eth1.generated and eth1.mac == r.eth1_mac
    assert spec.generated_macs == dx.GeneratedMacs(eth0=eth0.mac)
    # a computer row without a MAC: one is generated and reported as well
    spec = _test_spec(host, tmp_path, eth1_mac=None)
    assert spec.generated_macs.eth1 == spec.nics[1].mac and spec.generated_macs.eth0 is None
    # no domain capabilities on the test driver: no CPU mode for type 'test', qemu64 for 'qemu'
    assert cpu_for(host, "test") == dx.CpuSpec()
    assert cpu_for(host, "qemu").model == cpu_model.TCG_FALLBACK_MODEL


# --------------------------------------------------------------------------- qemu:///system


@pytest.mark.real
@pytest.mark.parametrize(("vcpus", "topology"), [(3, (1, 3, 1)), (6, (2, 3, 1))])
def test_libvirt_accepts_cpu_and_topology(env: Env, vcpus: int, topology: tuple[int, int, int]) -> None:
    """Defined and started on qemu:///system (blank master): libvirt's own XML shows the CPU mode and
    model, the topology and the lifecycle actions that were written."""
    res = env.reservation(image_minprocnumber=vcpus)
    env.master_for(res)
    prov = env.provisioner(res)
    prov.initialize()
    result = prov.load()
    guest = prov.guest()
    assert guest.is_active()
    parsed = dx.ParsedDomain.parse(guest.xml(inactive=True))
    expected = cpu_for(prov.host, result.domain_type)
    assert parsed.cpu is not None and parsed.vcpus == vcpus
    assert (parsed.cpu.sockets, parsed.cpu.cores, parsed.cpu.threads) == topology
    assert parsed.cpu.mode == expected.mode
    if result.domain_type == "qemu":
        assert parsed.cpu.model == expected.model and expected.model in cpu_model.TCG_MODELS
    assert (parsed.on_poweroff, parsed.on_reboot, parsed.on_crash) == ("destroy", "restart", "preserve")
    assert not result.generated_macs


@pytest.fixture
def hpc_network() -> Iterator[str]:
    name = libvirt_env.ensure_isolated_network(f"vclhpc{RUN_ID}")  # matches 'hpc' and 'vclhpc'
    yield name
    libvirt_env.remove_network(name)


@pytest.mark.real
def test_project_nics_and_generated_macs_on_qemu(env: Env, hpc_network: str) -> None:
    """'hpc': eth0 on virtualswitch0, the public NIC on the project's network; 'vclhpc': eth1 on
    virtualswitch1 plus one NIC on the project's network; generated eth0/eth1 MACs are reported."""
    res = env.reservation(image_project="hpc")
    env.master_for(res)
    prov = env.provisioner(res)
    prov.initialize()
    prov.load()
    interfaces = dx.ParsedDomain.parse(prov.guest().xml()).interfaces
    assert [(i.source, i.mac) for i in interfaces[:2]] == [
        (env.network, res.eth0_mac),
        (hpc_network, res.eth1_mac),
    ]

    res = env.reservation(image_project="vclhpc", vmprofile={"eth0_generated": True, "eth1_generated": True})
    prov = env.provisioner(res)
    prov.initialize()
    result = prov.load()
    interfaces = dx.ParsedDomain.parse(prov.guest().xml()).interfaces
    generated = result.generated_macs
    assert generated.eth0 and generated.eth1 and res.eth0_mac not in (generated.eth0, generated.eth1)
    assert [(i.source, i.mac) for i in interfaces[:2]] == [
        (env.network, generated.eth0),
        (env.network, generated.eth1),
    ]
    ours = [i for i in interfaces[2:] if i.source == hpc_network]
    assert len(ours) == 1 and (ours[0].mac or "").startswith(PROJECT_MAC_PREFIX + ":")


@pytest.mark.real
@pytest.mark.guest
def test_guest_boots_with_four_vcpus_on_two_sockets(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    """The test guest's Debian kernel boots on the chosen CPU (TCG here: a named model) and sees
    4 CPUs in 2 packages, as libvirt.pm's topology for image.minprocnumber 4."""
    res = env.guest_reservation(dhcp_net, guest_image, 31, image_minprocnumber=4)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    prov = env.guest_provisioner(res)
    prov.initialize()
    result = prov.load()
    assert result.answer is not None and result.answer.address == res.computer_private_ip
    parsed = dx.ParsedDomain.parse(prov.guest().xml(inactive=True))
    assert parsed.cpu is not None and (parsed.cpu.sockets, parsed.cpu.cores, parsed.cpu.threads) == (2, 2, 1)
    assert parsed.cpu.mode == cpu_for(prov.host, result.domain_type).mode
    login = postload.login_for(res, res.computer_private_ip or "", host_keys=None)
    assert login is not None
    with postload.GuestShell(login) as shell:
        cpuinfo = shell.check(["cat", "/proc/cpuinfo"])
    lines = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    processors = [v.strip() for k, v in lines if k.strip() == "processor"]
    packages = {v.strip() for k, v in lines if k.strip() == "physical id"}
    assert len(processors) == 4, cpuinfo
    assert packages == {"0", "1"}, cpuinfo
