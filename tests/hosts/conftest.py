"""One second VM host per session (its own libvirtd in its own mount and network namespaces), a
repository directory both hosts see at the same path, and a guest stack of host A with host B seeded
into its site."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.devkit.libvirt_env import IMAGES_ROOT, make_datastore, remove_datastore, system_available
from worker.devkit.require import missing_service
from worker.devkit.second_host import SecondHost, second_host
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.devkit.two_hosts import HostB, add_host_b

# Redis DBs of this package's stacks: none of the other suites' or the benchmarks'.
REDIS_DBS = (7, 8, 9)


def _directory_on_both_hosts(kind: str) -> Iterator[Path]:
    """A directory under the images root that both hosts see at the same path, removed afterwards."""
    path = make_datastore(f"vcl-worker-hosts-{kind}-{uuid.uuid4().hex[:8]}", IMAGES_ROOT)
    try:
        yield path
    finally:
        remove_datastore(path)


@pytest.fixture(scope="session")
def repository() -> Iterator[Path]:
    """The site's image repository: one directory, the same path on both hosts."""
    yield from _directory_on_both_hosts("repo")


@pytest.fixture(scope="session")
def shared_datastore() -> Iterator[Path]:
    """A datastore both hosts see at the same path (as with NFS)."""
    yield from _directory_on_both_hosts("shared")


@pytest.fixture(scope="session")
def host_b_machine(repository: Path, shared_datastore: Path) -> Iterator[SecondHost]:
    if not system_available():
        missing_service("qemu:///system is not available")
    with second_host("hosts", shared=(repository, shared_datastore)) as host:
        yield host


@pytest.fixture(scope="session")
def two_host_stack(repository: Path) -> Iterator[Stack]:
    config = StackConfig(
        tag="hb", vms=1, guest=True, redis_dbs=REDIS_DBS, site={"repository_path": str(repository)},
        # The product default: the stack's 1 s re-sends race the guest's own power-off (a re-sent
        # shutdown to a domain already in libvirt's "shutdown" state fails: see the report of issue 20).
        env={"VCL_SHUTDOWN_RETRY_INTERVAL": "10"},
    )  # fmt: skip
    with open_stack(config, Stack) as s:
        yield s


@pytest.fixture(scope="session")
def host_b(two_host_stack: Stack, host_b_machine: SecondHost) -> Iterator[HostB]:
    hb = add_host_b(two_host_stack, host_b_machine, vms=5)  # 3: wrong host, 4: shared datastore
    try:
        yield hb
    finally:
        hb.close()
