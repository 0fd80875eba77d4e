from __future__ import annotations

import dataclasses
import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings
from worker.devkit import libvirt_env
from worker.devkit.guest_image import GuestImage, ensure_guest_image
from worker.devkit.guest_network import DhcpNetwork, create_dhcp_network, remove_network
from worker.devkit.require import in_ci
from worker.devkit.reservations import make_reservation
from worker.hypervisors.host import get_host
from worker.hypervisors.provisioner import LibvirtProvisioner
from worker.reservation import Reservation

RUN_ID = uuid.uuid4().hex[:6]
PREFIX = f"vc{RUN_ID}"  # computer short names: vc<run>n<k>
_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: needs the real qemu:///system libvirtd")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # In CI the real stack is required: no skip marker, the tests fail instead.
    if not libvirt_env.system_available() and not in_ci():
        skip = pytest.mark.skip(reason="qemu:///system not available")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def network() -> Iterator[str]:
    name = libvirt_env.ensure_isolated_network(f"vcltest-{RUN_ID}")
    yield name
    libvirt_env.cleanup_domains(PREFIX)
    libvirt_env.remove_network(name)


@dataclass
class Env:
    datastore: Path
    settings: Settings
    network: str

    @property
    def images(self) -> Path:
        """vmprofile.datastorepath (masters); COWs go to <root>/vms, a repository to <root>/repo."""
        p = self.datastore / "images"
        p.mkdir(mode=0o755, exist_ok=True)
        return p

    def reservation(self, **overrides: Any) -> Reservation:
        short = overrides.pop("computer_short_name", f"{PREFIX}n{next(_counter)}")
        vp = {
            "datastore_path": str(self.images),
            "vm_path": str(self.datastore / "vms"),
            "virtualswitch0": self.network,
            "virtualswitch1": self.network,
        }
        vp.update(overrides.pop("vmprofile", {}))
        n = int(short.rsplit("n", 1)[-1]) if short.rsplit("n", 1)[-1].isdigit() else 1
        defaults: dict[str, Any] = dict(
            computer_short_name=short,
            computer_hostname=f"{short}.test",
            computer_id=100000 + n,
            eth0_mac=f"52:54:00:{RUN_ID[:2]}:{n // 256:02x}:{n % 256:02x}",
            eth1_mac=f"52:54:00:{RUN_ID[2:4]}:{n // 256:02x}:{n % 256:02x}",
            vmprofile=vp,
        )
        defaults.update(overrides)
        return make_reservation(**defaults)

    def provisioner(self, res: Reservation | None = None, **overrides: Any) -> LibvirtProvisioner:
        return LibvirtProvisioner(
            res or self.reservation(**overrides), settings=self.settings, host=get_host("qemu:///system")
        )

    def guest_reservation(self, net: DhcpNetwork, image: GuestImage, host_n: int, **kw: Any) -> Reservation:
        """A reservation for the real guest: eth0 on ``net`` with address ``host_n`` pinned, 256 MB,
        the guest's key as managementnode.keys (post-load logs in with it)."""
        return self.reservation(
            vmprofile={"virtualswitch0": net.name, "virtualswitch1": ""},
            computer_private_ip=net.host_ip(host_n),
            image_minram=256,
            management_node_keys=(str(image.private_key),),
            **kw,
        )

    def guest_provisioner(self, res: Reservation, **settings: Any) -> LibvirtProvisioner:
        """A provisioner that waits for the guest (120 s unless ``settings`` say otherwise)."""
        s = dataclasses.replace(self.settings, **{"wait_for_guest": True, "ready_timeout": 120, **settings})
        return LibvirtProvisioner(res, settings=s, host=get_host("qemu:///system"))

    def master_for(self, res: Reservation, pattern: int | None = 0xCD) -> Path:
        return libvirt_env.make_master(
            self.images / f"{res.imagerevision_imagename}.qcow2", size_mb=64, pattern=pattern, mode=0o444
        )


@pytest.fixture(scope="module")
def dhcp_net() -> Iterator[DhcpNetwork]:
    """An isolated DHCP network for real guests (one per test module)."""
    conn = libvirt_env.connect()
    net = create_dhcp_network(conn, "vclcore")
    yield net
    remove_network(conn, net.name)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return ensure_guest_image()


@pytest.fixture
def env(network: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40]
    ds = libvirt_env.make_datastore(f"{RUN_ID}-{safe}")
    settings = Settings(
        libvirt_uri="qemu:///system",
        lock_dir=str(ds / "locks"),
        shutdown_timeout=2,
        shutdown_retry_interval=1,
        qemu_img_convert_timeout=600,
        qemu_img_info_timeout=30,
        # Blank masters: no OS to answer (real guests: tests/guest, tests/core/test_real_guest.py).
        wait_for_guest=False,
    )
    e = Env(ds, settings, network)
    yield e
    libvirt_env.cleanup_domains(PREFIX)
    libvirt_env.remove_datastore(ds)


@pytest.fixture
def events() -> tuple[list[Any], Callable[[Any], None]]:
    seen: list[Any] = []
    return seen, seen.append


def files_in(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and "locks" not in p.parts}


os.environ.setdefault("VCL_LIBVIRT_URI", "qemu:///system")
