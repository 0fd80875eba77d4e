"""Configuration errors fail a load at once, naming the setting or row: a ``managementnode.keys``
file that is missing, unreadable or no key; a master that cannot be read; a vmprofile switch that
names no network. Before the change a missing key file failed every post-load login until the
readiness deadline (here 60 s)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.core.conftest import Env
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork
from worker.hypervisors.errors import (
    ConfigurationError,
    KeyFileError,
    NetworkNotFoundError,
    UnreadableMasterError,
)
from worker.hypervisors.host import get_host

pytestmark = [pytest.mark.real, pytest.mark.guest]


def _fails_at_once(env: Env, res: object, error: type[Exception], match: str) -> None:
    prov = env.guest_provisioner(res, ready_timeout=60)  # type: ignore[arg-type]
    t0 = time.monotonic()
    with pytest.raises(error, match=match) as ei:
        prov.initialize()
        prov.load()
    took = time.monotonic() - t0
    assert isinstance(ei.value, ConfigurationError)
    assert took < 10, f"{error.__name__} took {took:.1f} s"
    # Nothing was started or defined for the computer.
    assert get_host("qemu:///system").lookup_guest(prov.layout.domain_name) is None


def test_key_file_errors_fail_at_once(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage, tmp_path: Path
) -> None:
    garbage = tmp_path / "not-a-key"
    garbage.write_text("hello\n")
    for n, (keys, match) in enumerate([
        (("/nonexistent/vcl/id_rsa",), r"managementnode\.keys .*/nonexistent/vcl/id_rsa does not exist"),
        ((str(tmp_path),), r"managementnode\.keys .* cannot be read"),
        ((str(guest_image.private_key), str(garbage)), r"keys .*not-a-key is not a private key"),
    ]):  # fmt: skip
        res = env.guest_reservation(dhcp_net, guest_image, 60 + n)
        install_guest_master(guest_image, env.images, res.imagerevision_imagename)
        _fails_at_once(env, replace(res, management_node_keys=keys), KeyFileError, match)


def test_unreadable_master_fails_at_once(env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 64)
    (env.images / f"{res.imagerevision_imagename}.qcow2").mkdir()  # in the master's place
    _fails_at_once(env, res, UnreadableMasterError, r"master .* cannot be read")


def test_missing_network_names_the_vmprofile_row(env: Env, guest_image: GuestImage) -> None:
    res = env.reservation(vmprofile={"virtualswitch0": "vcl-no-such-net", "virtualswitch1": ""})
    with pytest.raises(NetworkNotFoundError, match=r"vmprofile '.*' virtualswitch0"):
        env.guest_provisioner(res).initialize()
