"""Real-stack fixtures for the pipeline: MariaDB from vcl.sql, Redis, libvirtd, a prefork Celery worker."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis
from celery import Celery

from tests.support.celery_worker import CeleryWorker, start_celery_worker
from tests.support.db import create_test_database, drop_test_database
from tests.support.libvirt_env import (
    cleanup_domains,
    ensure_isolated_network,
    make_master,
    qemu_img_info,
    remove_network,
    write_pattern,
)
from worker import wiring as runtime
from worker.app import make_app, vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SeededSite, SiteSpec, create_request, seed_site
from worker.db.store import VclStore

__all__ = ["VENV_BIN", "CeleryWorker", "Stack", "qemu_img_info"]

VENV_BIN = Path(sys.executable).parent
IMAGES_ROOT = Path("/var/lib/libvirt/images")
REDIS_DBS = (11, 12, 13)


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    store: VclStore
    site: SeededSite
    sf: Any
    datastore: Path
    network: str
    vmhost: str
    queue: str
    run_id: str
    # This stack's own Celery app: the module-level app may be configured for another stack.
    app: Celery

    def conn(self) -> libvirt.virConnect:
        return libvirt.open(self.settings.libvirt_uri)

    def new_request(
        self, index: int, state: str = "new", imagerevision_id: int | None = None
    ) -> tuple[int, int]:
        """A request + reservation on computer ``index`` as the web front end inserts them."""
        return create_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            image_id=self.site.image_id,
            imagerevision_id=imagerevision_id or self.site.imagerevision_id,
            management_node_id=self.site.management_node_id,
            state=state,
            laststate=state,
        )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    run_id = uuid.uuid4().hex[:6]
    db_url = create_test_database("vcle2e")
    datastore = IMAGES_ROOT / f"vcl-worker-e2e-{run_id}"
    datastore.mkdir(mode=0o755, parents=True)
    network = ensure_isolated_network(f"vcle2e-{run_id}")
    vmhost = f"e2ehost{run_id}"
    for db in REDIS_DBS:
        redis.Redis(db=db).flushdb()
    settings = replace(
        Settings(),
        database_url=db_url,
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DBS[0]}",
        result_backend=f"redis://127.0.0.1:6379/{REDIS_DBS[1]}",
        lock_redis_url=f"redis://127.0.0.1:6379/{REDIS_DBS[2]}",
        lock_dir=str(datastore / ".locks"),
        # The guests have no OS and never answer ACPI: destroy them after 2 s, not 60 s.
        shutdown_timeout=2,
        shutdown_retry_interval=1,
        lock_wait=240,
    )
    env = {**os.environ, **settings.to_env()}
    engine = make_engine(db_url)
    sf = make_session_factory(engine)
    store = VclStore(sf)
    spec = SiteSpec(
        datastore_path=str(datastore),
        vm_path=str(datastore),
        repository_path=None,
        virtualswitch0=network,
        virtualswitch1=network,
        vmhost_hostname=f"{vmhost}.example.org",
        vm_hostnames=(f"e2evm{run_id}a.example.org", f"e2evm{run_id}b.example.org"),
    )
    site = seed_site(sf, spec)
    master = make_master(datastore / f"{site.imagename}.qcow2", size_mb=64, mode=0o644)
    write_pattern(master, 0x5A, 0, "2M")
    master.chmod(0o444)
    runtime.configure(settings, store)
    try:
        yield Stack(
            settings, env, store, site, sf, datastore, network, vmhost, vmhost_queue(vmhost), run_id,
            make_app(settings),
        )  # fmt: skip
    finally:
        cleanup_domains(f"e2evm{run_id}")
        remove_network(network)
        shutil.rmtree(datastore, ignore_errors=True)
        engine.dispose()
        drop_test_database(db_url)


@pytest.fixture(scope="session")
def celery_worker_proc(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    worker = start_celery_worker(
        stack.env, [stack.queue], tmp_path_factory.mktemp("celery"), host=stack.vmhost, prefix="e2e"
    )
    try:
        yield worker
    finally:
        worker.stop()
