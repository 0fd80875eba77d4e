"""The real stack for the benchmarks: a fresh MariaDB from vcl.sql, an isolated libvirt network,
a datastore + repository under /var/lib/libvirt/images, Redis DBs 14/15, a prefork Celery worker.

Everything made here is removed by :meth:`BenchStack.close`, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import libvirt
import redis
from sqlalchemy import text

from tests.support.celery_worker import CeleryWorker, start_celery_worker
from tests.support.db import create_test_database, drop_test_database
from tests.support.libvirt_env import ensure_isolated_network, remove_network
from worker import wiring as runtime
from worker.app import app, configure, vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SeededSite, SiteSpec, create_request, seed_site
from worker.db.store import VclStore

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IMAGES_ROOT = Path("/var/lib/libvirt/images")
RESULTS = REPO_ROOT / "bench" / "results"
# Redis DBs of the benchmark (the tests use 11-13): broker, results + locks.
REDIS_BROKER_DB, REDIS_RESULT_DB = 14, 15
N_COMPUTERS = 24
REPO_IMAGE_MIB = 1024


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_data_image(path: Path, size_mib: int, data_mib: int, pattern: int = 0x5A) -> None:
    """A standalone qcow2 of ``size_mib`` with the first ``data_mib`` MiB written (real clusters)."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"])
    if data_mib:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 {data_mib}M", str(path)])


def open_libvirt(uri: str = "qemu:///system", wait: float = 120) -> libvirt.virConnect:
    """libvirt.open, waiting up to ``wait`` s for libvirtd (other suites on this host restart it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def remove_domains(prefix: str) -> None:
    conn = open_libvirt()
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        conn.close()


@dataclass
class BenchStack:
    run_id: str
    settings: Settings
    env: dict[str, str]
    db_url: str
    engine: Any
    sf: Any
    store: VclStore
    site: SeededSite
    datastore: Path
    repository: Path
    network: str
    vmhost: str
    queue: str
    shorts: list[str]
    worker: CeleryWorker | None = None
    extra_dbs: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ setup / teardown
    @classmethod
    def create(cls) -> BenchStack:
        run_id = uuid.uuid4().hex[:6]
        datastore = IMAGES_ROOT / f"vcl-bench-{run_id}"
        # Not under the datastore: masters are found by a recursive search of the datastore.
        repository = IMAGES_ROOT / f"vcl-bench-{run_id}-repo"
        network = ensure_isolated_network(f"vclbench-{run_id}")
        db_url = ""
        try:
            datastore.mkdir(mode=0o755)
            repository.mkdir(mode=0o755)
            db_url = create_test_database("vclbench")
            for db in (REDIS_BROKER_DB, REDIS_RESULT_DB):
                redis.Redis(db=db).flushdb()
            settings = replace(
                Settings(),
                database_url=db_url,
                broker_url=f"redis://127.0.0.1:6379/{REDIS_BROKER_DB}",
                result_backend=f"redis://127.0.0.1:6379/{REDIS_RESULT_DB}",
                lock_redis_url=f"redis://127.0.0.1:6379/{REDIS_RESULT_DB}",
                lock_dir=str(datastore / ".locks"),
                shutdown_timeout=1,
                shutdown_retry_interval=1,
                lock_wait=600,
            )
            # No-OS guests never answer ACPI: shutdown_timeout=1 destroys them after 1 s, not 60 s.
            env = {**os.environ, **settings.to_env(), "VCL_LOG_LEVEL": "WARNING"}
            engine = make_engine(db_url)
            sf = make_session_factory(engine)
            store = VclStore(sf)
            vmhost = f"bhost{run_id}"
            hostnames = tuple(f"bvm{run_id}{i:02d}.example.org" for i in range(N_COMPUTERS))
            spec = SiteSpec(
                datastore_path=str(datastore),
                vm_path=str(datastore),
                repository_path=None,
                virtualswitch0=network,
                virtualswitch1=network,
                vmhost_hostname=f"{vmhost}.example.org",
                vm_hostnames=hostnames,
                image_minram=512,
                # MACs unique to this run: capture finds its domain by MAC among all domains on the host.
                mac_seed=random.randrange(0x80, 0xFF),
            )
            site = seed_site(sf, spec)
            configure(app, settings)
            runtime.configure(settings, store)
            stack = cls(
                run_id, settings, env, db_url, engine, sf, store, site, datastore, repository, network,
                vmhost, vmhost_queue(vmhost), [h.split(".")[0] for h in hostnames],
            )  # fmt: skip
        except BaseException:
            remove_network(network)
            shutil.rmtree(datastore, ignore_errors=True)
            shutil.rmtree(repository, ignore_errors=True)
            if db_url:
                drop_test_database(db_url)
            raise
        return stack

    def make_images(self) -> None:
        """The repository copy (1 GiB qcow2, all data) and a datastore master copied from it."""
        name = self.site.imagename
        repo_dir = self.repository / name
        repo_dir.mkdir(mode=0o755, exist_ok=True)
        make_data_image(self.repo_image, REPO_IMAGE_MIB, REPO_IMAGE_MIB)
        self.restore_master()

    @property
    def repo_image(self) -> Path:
        return self.repository / self.site.imagename / f"{self.site.imagename}.qcow2"

    @property
    def master(self) -> Path:
        return self.datastore / f"{self.site.imagename}.qcow2"

    def restore_master(self) -> None:
        if not self.master.exists():
            shutil.copyfile(self.repo_image, self.master)
            os.chmod(self.master, 0o444)

    def remove_master(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.master.unlink()

    def set_repository(self, enabled: bool) -> None:
        with self.sf.begin() as s:
            s.execute(
                text("UPDATE vmprofile SET repositorypath = :p WHERE id = :id"),
                {"p": str(self.repository) if enabled else None, "id": self.site.vmprofile_id},
            )

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        for prefix in (f"bvm{self.run_id}", f"braw{self.run_id}"):
            with contextlib.suppress(Exception):
                remove_domains(prefix)
        with contextlib.suppress(Exception):
            remove_network(self.network)
        for root in (self.datastore, self.repository):
            shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.engine.dispose()
        for url in [self.db_url, *self.extra_dbs]:
            with contextlib.suppress(Exception):
                drop_test_database(url)

    # ------------------------------------------------------------------ worker
    def start_worker(self, concurrency: int) -> CeleryWorker:
        if self.worker is not None and self.worker.concurrency == concurrency:
            return self.worker
        self.stop_worker()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.worker = start_celery_worker(
            self.env, [self.queue], RESULTS, host=self.vmhost, prefix="bench", concurrency=concurrency,
            loglevel="WARNING",
        )  # fmt: skip
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    # ------------------------------------------------------------------ reservations
    def new_load(self, index: int, imagerevision_id: int | None = None) -> int:
        """A ``new`` reservation on computer ``index`` (what the web inserts); returns its id."""
        _req, res = create_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            image_id=self.site.image_id,
            imagerevision_id=imagerevision_id or self.site.imagerevision_id,
            management_node_id=self.site.management_node_id,
        )
        return res

    def send(self, task: str, reservation_id: int) -> Any:
        return app.send_task(task, args=[reservation_id], queue=self.queue)

    def reset_computer(self, index: int) -> None:
        """No domain and no overlay for computer ``index`` (untimed cleanup between repeats)."""
        short = self.shorts[index]
        remove_domains(f"{short}_")
        for p in self.datastore.glob(f"{short}_*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def reset_all(self) -> None:
        remove_domains(f"bvm{self.run_id}")
        for p in self.datastore.glob(f"bvm{self.run_id}*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def running_domains(self, prefix: str) -> list[str]:
        conn = open_libvirt(self.settings.libvirt_uri)
        try:
            return [
                d.name()
                for d in conn.listAllDomains(0)
                if d.name().startswith(prefix) and d.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            ]
        finally:
            conn.close()
