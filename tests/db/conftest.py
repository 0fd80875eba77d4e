"""Fixtures: one fresh MariaDB database per test session, loaded from the real vcl.sql."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SeededSite, SiteSpec, seed_site
from worker.db.store import VclStore
from worker.devkit.database import create_test_database, drop_test_database, mariadb_available
from worker.devkit.require import missing_service

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def vcl_db_url() -> Iterator[str]:
    if not mariadb_available():
        missing_service("MariaDB at 127.0.0.1:3306 (root, no password) is not reachable")
    url = create_test_database()
    try:
        yield url
    finally:
        drop_test_database(url)


@pytest.fixture(scope="session")
def engine(vcl_db_url: str) -> Iterator[Engine]:
    eng = make_engine(vcl_db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(scope="session")
def sf(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture()
def store(sf: sessionmaker[Session]) -> VclStore:
    return VclStore(sf)


def unique_spec(**overrides: object) -> SiteSpec:
    """A SiteSpec whose unique columns (hostnames, image/profile names, MACs) do not collide."""
    n = next(_counter)
    base: dict[str, object] = {
        "management_node_hostname": f"mn{n}.example.org",
        "vmhost_hostname": f"kvmhost{n}.example.org",
        "vm_hostnames": (f"vm{n}a.example.org", f"vm{n}b.example.org"),
        "vm_ip_prefix": f"10.{n // 250}.{n % 250}.",
        "image_prettyname": f"CentOS 7 Base {n}",
        "profile_name": f"KVM - vcl-worker {n}",
        "mac_seed": n,
    }
    base.update(overrides)
    return SiteSpec(**base)  # type: ignore[arg-type]


@pytest.fixture()
def site(sf: sessionmaker[Session]) -> SeededSite:
    """A fresh site (its own management node, host, VMs and image) per test."""
    return seed_site(sf, unique_spec())
