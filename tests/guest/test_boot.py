"""The built guest boots like a VCL image: DHCP lease of its reserved address, SSH, login, ACPI off."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt
import paramiko
import pytest

from tests.guest import env
from tests.guest.conftest import TIMINGS
from worker.devkit import guest_network
from worker.devkit.guest_image import GuestImage
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.network import LibvirtNetwork, domain_ipv4_addresses
from worker.hypervisors.readiness import GuestNotReadyError, wait_for_ssh

pytestmark = pytest.mark.guest

NEGATIVE_DEADLINE = 25.0  # a healthy guest answers in ~15 s here (TCG); each control stays < 45 s


def _console_tail(booted: Any) -> str:
    try:
        return booted.console_log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no console log)"


def _wait_lease(net: LibvirtNetwork, mac: str, timeout: float) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ips = [lease.ip for lease in guest_network.leases(net, mac)]
        if ips:
            return ips
        time.sleep(0.1)
    return []


def test_guest_boots_gets_reserved_ip_answers_ssh_and_powers_off(
    host: LibvirtHost, network: env.TestNetwork, guest_image: GuestImage, boot_guest: Callable[..., Any]
) -> None:
    g = boot_guest(guest_image.path)
    net = LibvirtNetwork.lookup(host, network.name)

    ips = _wait_lease(net, g.mac, 90)
    lease_s = time.monotonic() - g.started
    assert ips == [g.ip], f"lease {ips} for {g.mac}; console:\n{_console_tail(g)}"
    TIMINGS["start -> DHCP lease"] = lease_s
    assert domain_ipv4_addresses(host, g.name, g.mac) == [g.ip]

    try:
        ready = wait_for_ssh(g.ip, deadline=90)
    except GuestNotReadyError as exc:
        raise AssertionError(f"{exc}; console:\n{_console_tail(g)}") from exc
    TIMINGS["start -> SSH banner"] = time.monotonic() - g.started
    assert ready.banner.startswith("SSH-2.0-dropbear"), ready

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            g.ip,
            username="root",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(guest_image.private_key)),
            look_for_keys=False,
            allow_agent=False,
            timeout=15,
            banner_timeout=15,
            auth_timeout=15,
        )
        _stdin, stdout, stderr = client.exec_command(
            "hostname vmtest1; hostname; echo ok > /root/probe; cat /root/probe", timeout=30
        )
        out = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
    finally:
        client.close()
    assert out == "vmtest1\nok\n"
    TIMINGS["start -> SSH command done"] = time.monotonic() - g.started

    t0 = time.monotonic()
    g.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    off = env.wait_state(g.dom, libvirt.VIR_DOMAIN_SHUTOFF, 30)
    assert off is not None, f"still running 30 s after ACPI power button; console:\n{_console_tail(g)}"
    TIMINGS["ACPI power button -> shut off"] = time.monotonic() - t0


def test_guest_with_64_mib_never_answers(guest_image: GuestImage, boot_guest: Callable[..., Any]) -> None:
    g = boot_guest(guest_image.path, memory_mib=64)
    with pytest.raises(GuestNotReadyError) as err:
        wait_for_ssh(g.ip, deadline=NEGATIVE_DEADLINE)
    assert f"{g.ip}:22" in str(err.value)
    # libvirt still calls it running: exactly the false positive readiness exists for.
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert time.monotonic() - g.started < 45


def test_blank_disk_never_answers(boot_guest: Callable[..., Any]) -> None:
    g = boot_guest(None)
    with pytest.raises(GuestNotReadyError) as err:
        wait_for_ssh(g.ip, deadline=NEGATIVE_DEADLINE)
    message = str(err.value)
    assert f"{g.ip}:22" in message and "last seen" in message
    assert time.monotonic() - g.started < 45
