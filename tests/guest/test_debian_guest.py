"""The Debian 12 test image loads like a VCL image: the provisioning core defines and boots it from a
COW over its master, it takes the computer's pinned address by DHCP, answers SSH, post-load runs in it,
and its real state is what VCL's Linux OS module expects; ACPI powers it off. One boot, under TCG here.

Figures printed (and in the "guest timings" summary): build (this call and the original cold build),
a cached call, the qcow2's size, create() → SSH banner, the whole load, ACPI shutdown.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.guest import env
from tests.guest.conftest import TIMINGS
from worker.config import Settings
from worker.devkit import libvirt_env
from worker.devkit.debian_image import ensure_debian_image
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork, create_dhcp_network, remove_network
from worker.devkit.reservations import make_reservation
from worker.hypervisors.domain_type import choose_domain_type
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.provisioner import LibvirtProvisioner

pytestmark = [pytest.mark.guest, pytest.mark.debian]

# Seconds the guest gets to answer SSH. Measured here under TCG: ~1-3.5 min depending on how busy the
# host's two cores are (systemd's boot, not the firmware, is most of it).
READY_TIMEOUT = 600
SHUTDOWN_TIMEOUT = 120
GiB = 1024**3
MiB = 1024**2

# One SSH session, one section per check: "== name rc" then its output.
CHECKS = {
    "os-release": "cat /etc/os-release",
    "pid1": "cat /proc/1/comm",
    "eth0": "ip -4 -o addr show dev eth0",
    "hostname": "hostname",
    "sshd-T": "sshd -T",
    "tools": "for c in useradd userdel chpasswd passwd iptables iptables-save systemctl hostnamectl "
    "lsb_release ifconfig route netstat ip dhclient ssh-keygen sudo; "
    "do command -v $c >/dev/null || echo missing: $c; done",
    "useradd": "useradd -m -s /bin/bash vcltest && echo vcltest:Secret-123 | chpasswd && id -u vcltest "
    "&& userdel -r vcltest",
    "iptables": "iptables -L INPUT -n",
    "root-password": "passwd -S root",
    "sshd-unit": "systemctl show sshd.service -p FragmentPath --value; systemctl is-enabled ssh.service",
    "machine-id": "cat /etc/machine-id",
    # (zstd's CLI skips symbolic links such as /initrd.img: name the file itself)
    "initramfs": "lsinitramfs /boot/initrd.img-$(uname -r) "
    "| grep -oE '(ata_piix|ahci|virtio_blk|sd_mod|e1000|8139too).ko' | sort -u",
    "boot": "systemctl is-system-running --wait; systemd-analyze || true",
    # When sshd came up, in the guest's own uptime (the rest of create() -> banner is firmware + GRUB).
    "sshd-up": "systemctl show ssh.service -p ExecMainStartTimestampMonotonic --value",
    "failed": "systemctl list-units --failed --plain --no-legend",
}


def _run_checks(address: str, key: Path) -> dict[str, tuple[int, str]]:
    script = "".join(f"echo '== {name}'; ( {cmd} ) 2>&1; echo \"== rc $?\"\n" for name, cmd in CHECKS.items())
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            address,
            username="root",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
            look_for_keys=False,
            allow_agent=False,
            timeout=30,
            banner_timeout=60,
            auth_timeout=60,
        )
        _stdin, stdout, _stderr = client.exec_command(f"sh -c {shlex.quote(script)}", timeout=300)
        text = stdout.read().decode(errors="replace")
    finally:
        client.close()
    results: dict[str, tuple[int, str]] = {}
    name, lines = "", []
    for line in text.splitlines():
        if line.startswith("== rc "):
            results[name] = (int(line.split()[-1]), "\n".join(lines))
        elif line.startswith("== "):
            name, lines = line[3:], []
        else:
            lines.append(line)
    assert set(results) == set(CHECKS), f"incomplete session output:\n{text}"
    return results


@pytest.fixture(scope="module")
def debian_image() -> GuestImage:
    start = time.monotonic()
    image = ensure_debian_image()
    first = time.monotonic() - start
    start = time.monotonic()
    again = ensure_debian_image()
    cached = time.monotonic() - start
    assert again.cached and again.inputs_hash == image.inputs_hash
    assert cached < 2.0
    TIMINGS["debian image: this call" + (" (cached)" if image.cached else " (cold build)")] = first
    TIMINGS["debian image: its original build"] = image.build_seconds
    TIMINGS["debian image: cached call"] = cached
    print(
        f"debian image {image.path}: {'cached' if image.cached else 'built'} in {first:.1f} s "
        f"(original build {image.build_seconds:.1f} s), cached call {cached:.3f} s"
    )
    return image


@pytest.fixture
def dhcp_net() -> Iterator[DhcpNetwork]:
    conn = libvirt_env.connect()
    net = create_dhcp_network(conn, "vcldeb")
    yield net
    remove_network(conn, net.name)
    conn.close()


@pytest.fixture
def datastore() -> Iterator[Path]:
    ds = libvirt_env.make_datastore(f"debian-{uuid.uuid4().hex[:8]}")
    yield ds
    libvirt_env.remove_datastore(ds)


def test_debian_image_facts(debian_image: GuestImage) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(debian_image.path)], check=True, capture_output=True
        ).stdout
    )
    size = debian_image.path.stat().st_size
    TIMINGS["debian image: qcow2 MiB"] = size / MiB
    print(f"debian qcow2: {size / MiB:.1f} MiB on disk, {info['virtual-size'] / GiB:.0f} GiB virtual")
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["virtual-size"] == 3 * GiB
    assert size < 400 * MiB
    assert debian_image.public_key.startswith("ssh-ed25519 ")
    assert oct(debian_image.private_key.stat().st_mode & 0o777) == "0o600"
    assert debian_image.kernel_version.endswith("-amd64")
    packages = dict(json.loads((debian_image.path.parent / "meta.json").read_text())["packages"])
    assert {"systemd-sysv", "openssh-server", "ifupdown", "isc-dhcp-client", "iptables", "sudo"} <= set(
        packages
    )


@pytest.mark.timeout(READY_TIMEOUT + SHUTDOWN_TIMEOUT + 600)
def test_debian_guest_loads_answers_ssh_and_is_what_vcl_expects(
    host: LibvirtHost, debian_image: GuestImage, dhcp_net: DhcpNetwork, datastore: Path
) -> None:
    short = f"vdeb{uuid.uuid4().hex[:6]}"
    address = dhcp_net.host_ip(40)
    res = make_reservation(
        request_state="new",
        request_laststate="new",
        computer_short_name=short,
        computer_hostname=f"{short}.example.org",
        eth0_mac=env.random_mac(),
        eth1_mac=None,
        computer_private_ip=address,
        image_name="vmwarelinux-Debian12-3090",
        image_prettyname="Debian 12 (bookworm)",
        imagerevision_imagename="vmwarelinux-Debian12-3090-v0",
        image_id=3090,
        imagerevision_revision=0,
        image_minram=512,
        management_node_keys=(str(debian_image.private_key),),
        vmprofile={
            "datastore_path": str(datastore / "images"),
            "vm_path": str(datastore / "vms"),
            "virtualswitch0": dhcp_net.name,
            "virtualswitch1": "",
        },
    )
    install_guest_master(debian_image, datastore / "images", res.imagerevision_imagename)
    settings = Settings(
        libvirt_uri="qemu:///system",
        lock_dir=str(datastore / "locks"),
        wait_for_guest=True,
        ready_timeout=READY_TIMEOUT,
        boot_snapshots=False,  # one cold boot is what this test measures
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    prov = LibvirtProvisioner(res, settings=settings, host=host)
    try:
        prov.initialize()
        start = time.monotonic()
        result = prov.load()
        load_s = time.monotonic() - start
        answer = result.answer
        assert answer is not None and answer.address == address
        assert answer.banner.startswith("SSH-2.0-OpenSSH_"), answer.banner
        assert (
            result.domain_type == choose_domain_type(libvirt_offers=prov.host.offers_domain_type).domain_type
        )
        TIMINGS["debian: create() -> SSH banner"] = answer.seconds
        TIMINGS["debian: whole load (post-load included)"] = load_s
        print(f"debian guest ({result.domain_type}): SSH banner {answer.seconds:.1f} s after create()")

        checks = _run_checks(address, debian_image.private_key)
        failed = {name: out for name, (rc, out) in checks.items() if rc != 0 and name != "boot"}
        assert not failed, failed
        os_release = dict(line.split("=", 1) for line in checks["os-release"][1].splitlines() if "=" in line)
        assert os_release["ID"] == "debian" and os_release["VERSION_ID"] == '"12"', os_release
        assert os_release["VERSION_CODENAME"] == "bookworm"
        assert checks["pid1"][1].strip() == "systemd"
        assert f"inet {address}/24" in checks["eth0"][1]
        assert checks["hostname"][1].strip() == short  # post-load set it
        sshd = checks["sshd-T"][1].splitlines()
        assert "permitrootlogin without-password" in sshd  # prohibit-password, as sshd -T spells it
        assert checks["tools"][1].strip() == ""
        assert checks["root-password"][1].split()[1] == "L"  # locked
        assert checks["sshd-unit"][1].split() == ["/lib/systemd/system/ssh.service", "enabled"]
        machine_id = checks["machine-id"][1].strip()
        assert len(machine_id) == 32 and machine_id != "0" * 32
        # The initramfs boots from virtio, IDE and SATA disks and carries the usual NIC drivers.
        drivers = set(checks["initramfs"][1].split())
        assert {"ata_piix.ko", "ahci.ko", "virtio_blk.ko", "sd_mod.ko", "e1000.ko", "8139too.ko"} <= drivers
        print("guest boot:", " ".join(checks["boot"][1].split()))
        sshd_up = int(checks["sshd-up"][1].strip()) / 1e6
        TIMINGS["debian: sshd started (guest uptime)"] = sshd_up
        before = answer.seconds - sshd_up
        print(
            f"sshd started {sshd_up:.1f} s into the guest's uptime (~{before:.0f} s before: firmware, GRUB)"
        )
        assert checks["failed"][1].strip() == "", checks["failed"][1]

        guest = prov.guest()
        start = time.monotonic()
        assert guest.shutdown(timeout=SHUTDOWN_TIMEOUT, retry_interval=30), "ACPI shutdown: destroyed instead"
        TIMINGS["debian: ACPI power button -> shut off"] = time.monotonic() - start
        print(f"debian guest: ACPI shutdown in {TIMINGS['debian: ACPI power button -> shut off']:.1f} s")
    finally:
        libvirt_env.cleanup_domains(f"{short}_")
