"""Real-stack fixtures for the pipeline: MariaDB from vcl.sql, Redis, libvirtd, a prefork Celery worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis

from tests.support.db import create_test_database, drop_test_database
from worker.app import app, configure, vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SeededSite, SiteSpec, seed_site
from worker.db.store import VclStore
from worker.tasks import runtime

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

    def conn(self) -> libvirt.virConnect:
        return libvirt.open(self.settings.libvirt_uri)


def qemu_img_info(path: str | Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out))


def make_master(path: Path, size: str = "64M", pattern: int = 0x5A) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 2M", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    path.chmod(0o444)


def _define_network(name: str, bridge: str) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        xml = f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/></network>"
        net = conn.networkDefineXML(xml)
        net.create()
    finally:
        conn.close()


def _remove_network(name: str) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        net = conn.networkLookupByName(name)
        if net.isActive():
            net.destroy()
        net.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def remove_domains(prefix: str) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    run_id = uuid.uuid4().hex[:6]
    db_url = create_test_database("vcle2e")
    datastore = IMAGES_ROOT / f"vcl-worker-e2e-{run_id}"
    datastore.mkdir(mode=0o755, parents=True)
    network, bridge = f"vcle2e-{run_id}", f"ve2e{run_id}"
    _define_network(network, bridge)
    vmhost = f"e2ehost{run_id}"
    r = redis.Redis()
    for db in REDIS_DBS:
        redis.Redis(db=db).flushdb()
    del r
    settings = replace(
        Settings(),
        database_url=db_url,
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DBS[0]}",
        result_backend=f"redis://127.0.0.1:6379/{REDIS_DBS[1]}",
        lock_redis_url=f"redis://127.0.0.1:6379/{REDIS_DBS[2]}",
        lock_dir=str(datastore / ".locks"),
        shutdown_timeout=2,
        shutdown_retry_interval=1,
        lock_wait=240,
    )
    env = dict(os.environ)
    env.update(
        {
            "VCL_DATABASE_URL": settings.database_url,
            "CELERY_BROKER_URL": settings.broker_url,
            "CELERY_RESULT_BACKEND": settings.result_backend,
            "VCL_LOCK_REDIS_URL": settings.lock_redis_url,
            "VCL_LOCK_DIR": settings.lock_dir,
            "VCL_SHUTDOWN_TIMEOUT": "2",
            "VCL_SHUTDOWN_RETRY_INTERVAL": "1",
            "VCL_LOCK_WAIT": "240",
        }
    )
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
    make_master(datastore / f"{site.imagename}.qcow2")
    configure(app, settings)
    runtime.configure(settings, store)
    try:
        yield Stack(settings, env, store, site, sf, datastore, network, vmhost, vmhost_queue(vmhost), run_id)
    finally:
        remove_domains(f"e2evm{run_id}")
        _remove_network(network)
        shutil.rmtree(datastore, ignore_errors=True)
        engine.dispose()
        drop_test_database(db_url)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    name: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_celery_worker(stack: Stack, log_dir: Path, concurrency: int = 2) -> WorkerProcess:
    name = f"e2e-{uuid.uuid4().hex[:6]}@{stack.vmhost}"
    log = log_dir / f"{name.replace('@', '_')}.log"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "worker.app",
            "worker",
            "-Q",
            stack.queue,
            "-n",
            name,
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-E",
            "-l",
            "INFO",
        ],
        env=stack.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{log.read_text()[-3000:]}")
        replies = app.control.ping(destination=[name], timeout=1.0)
        if replies:
            return WorkerProcess(proc, name, log)
    proc.kill()
    raise RuntimeError(f"celery worker did not answer ping:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def celery_worker_proc(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = start_celery_worker(stack, tmp_path_factory.mktemp("celery"))
    try:
        yield worker
    finally:
        worker.stop()
