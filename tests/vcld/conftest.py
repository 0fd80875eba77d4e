"""The vcld tests' sites, one per test module (module-scoped fixtures, each built only when a module
asks for it), all from one builder (:mod:`tests.vcld.build`) with the module's variant of
:class:`~tests.vcld.build.SiteOptions`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.vcld.build import SiteOptions, open_site
from tests.vcld.site import BridgeSite
from worker.devkit.guest_image import GuestImage
from worker.devkit.require import missing_service

TIMINGS: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("vcld bridge measurements")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key:58s} {value}")


@pytest.fixture(scope="module")
def bridge_site() -> Iterator[BridgeSite]:
    """Two VM hosts on this machine's libvirtd, one network, the test guest, the probe OS module."""
    yield from open_site(SiteOptions(), TIMINGS)


@pytest.fixture(scope="module")
def cross_host_site() -> Iterator[BridgeSite]:
    """Host A on this machine's libvirtd, host B a real second VM host (own libvirtd, namespaces,
    datastore, network), a repository both see at the same path; the first master in A's datastore
    and the repository only. Host B's VM has more RAM: the web allocates host A's VM first."""
    yield from open_site(
        SiteOptions(tag="vx", second_host=True, repository=True, masters_on=(0,), vm_ram=(2048, 4096)),
        TIMINGS,
    )


def _debian_image() -> GuestImage:
    try:
        from worker.devkit.debian_image import ensure_debian_image
    except ImportError:
        missing_service("worker.devkit.debian_image (the Debian 12 guest image) is not there")
    return ensure_debian_image()


@pytest.fixture(scope="module")
def debian_site() -> Iterator[BridgeSite]:
    """One VM host on this machine's libvirtd (its guests reachable from vcld), the Debian 12 image,
    image 101 on VCL's OS row ``vmwareubuntu`` (``VCL::Module::OS::Linux::Ubuntu``, see test_debian)."""
    yield from open_site(
        SiteOptions(tag="vd", hosts=1, image=_debian_image, os_name="vmwareubuntu", minram=1024), TIMINGS
    )
