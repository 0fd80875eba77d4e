from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.guest import env
from worker.devkit import guest_network
from worker.devkit.guest_image import GuestImage, ensure_guest_image
from worker.devkit.require import missing_service
from worker.hypervisors.domain_type import choose_domain_type
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.network import LibvirtNetwork

URI = "qemu:///system"
TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guest: boots the real test guest on qemu:///system (TCG here)")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("guest timings (s)")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key:40s} {value:8.3f}")


@pytest.fixture(scope="session")
def host() -> Iterator[LibvirtHost]:
    h = LibvirtHost(URI)
    try:
        h.connection()
    except Exception as exc:  # the real stack is required; say so instead of failing every test
        missing_service(f"{URI} not available: {exc}")
    yield h
    h.close()


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    start = time.monotonic()
    img = ensure_guest_image()
    TIMINGS["ensure_guest_image (session cache)"] = time.monotonic() - start
    TIMINGS["  its original build"] = img.build_seconds
    return img


@pytest.fixture(scope="session")
def domain_type(host: LibvirtHost) -> str:
    def offers(kind: str) -> bool:
        caps = host.call("getCapabilities", lambda c: str(c.getCapabilities()))
        return f"<domain type='{kind}'" in caps

    choice = choose_domain_type(libvirt_offers=offers)
    print(f"domain type: {choice.domain_type} ({choice.reason})")
    return choice.domain_type


@pytest.fixture(scope="module")
def network(host: LibvirtHost) -> Iterator[env.TestNetwork]:
    conn = host.connection()
    net = env.create_network(conn)
    yield net
    env.remove_network(host.connection(), net.name)


@dataclass
class Booted:
    name: str
    dom: Any
    mac: str
    ip: str
    directory: Path
    console_log: Path
    started: float  # time.monotonic() just before create()


@pytest.fixture
def boot_guest(
    host: LibvirtHost, network: env.TestNetwork, domain_type: str
) -> Iterator[Callable[..., Booted]]:
    """Factory: define + start a guest with a DHCP reservation; everything removed afterwards."""

    made: list[tuple[str, Path, str]] = []
    counter = iter(range(10, 99))

    def boot(base: Path | None, memory_mib: int = 256) -> Booted:
        name = env.unique("vclg-vm")
        directory = env.make_guest_dir()
        mac = env.random_mac()
        made.append((name, directory, mac))
        ip = network.host_ip(next(counter))
        LibvirtNetwork.lookup(host, network.name).ensure_dhcp_host(mac, ip, name)
        disk = env.make_overlay(directory, base)
        log = directory / "console.log"
        xml = env.domain_xml(name, domain_type, disk, network.name, mac, memory_mib, log)
        dom = host.call("defineXML", lambda c: c.defineXML(xml))
        started = time.monotonic()
        dom.create()
        return Booted(name, dom, mac, ip, directory, log, started)

    yield boot
    conn = host.connection()
    for name, directory, mac in made:
        env.remove_domain(conn, name)
        if mac:
            with contextlib.suppress(Exception):  # the network goes away with the module anyway
                guest_network.remove_dhcp_host(LibvirtNetwork.lookup(host, network.name), mac)
        shutil.rmtree(directory, ignore_errors=True)
