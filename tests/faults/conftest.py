"""Fault-injection suite on the real stack, fully private so it can be broken on purpose:
its own ``redis-server`` (AOF ``appendfsync everysec``, no RDB), its own ``mariadbd`` loaded from
vcl.sql, a datastore under /var/lib/libvirt/images, an isolated libvirt network and prefork
``celery worker`` subprocesses. A session-finish hook prints the counters (terminal summary)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlalchemy import text

from tests.support.celery_worker import CeleryWorker, start_celery_worker
from tests.support.db import schema_path
from tests.support.libvirt_env import cleanup_domains, ensure_isolated_network, remove_network, sha256
from worker import wiring as runtime
from worker.app import app, configure, vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SeededSite, SiteSpec, create_request, seed_site
from worker.db.store import VclStore
from worker.hypervisors.host import LibvirtHost
from worker.reaper import plan_reap

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
IMAGES_ROOT = Path("/var/lib/libvirt/images")
N_VMS = 14

# Counters printed at the end of the session (pytest_terminal_summary).
COUNTERS: dict[str, int] = {
    "faults injected": 0,
    "reservations checked": 0,
    "reservations lost": 0,
    "duplicate domains": 0,
    "orphan overlays": 0,
    "masters changed": 0,
    "bad inputs tried": 0,
    "bad inputs rejected": 0,
}
_USED = {"faults": False}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _USED["faults"]:
        return
    terminalreporter.section("vcl-worker fault suite")
    for key, value in COUNTERS.items():
        terminalreporter.write_line(f"{key:<22} {value}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


# ---------------------------------------------------------------------- private Redis


@dataclass
class PrivateRedis:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(self.ping, 20, "redis-server")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_timeout=1).ping())

    def crash(self) -> None:
        """SIGKILL (no clean shutdown, no final save): only what AOF already fsynced survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------- private MariaDB


@dataclass
class PrivateMariaDB:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def cnf(self) -> Path:
        return self.dir / "my.cnf"

    def install(self) -> None:
        self.cnf.write_text(
            "[mariadbd]\nuser=root\n"
            f"datadir={self.dir / 'data'}\nport={self.port}\nbind-address=127.0.0.1\n"
            f"socket={self.dir / 'sock'}\npid-file={self.dir / 'pid'}\nlog-error={self.dir / 'err.log'}\n"
            "skip-log-bin\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=16M\n"
            "transaction-isolation=READ-COMMITTED\n"
        )
        subprocess.run(
            ["mariadb-install-db", f"--defaults-file={self.cnf}", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mariadbd", f"--defaults-file={self.cnf}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(self.ping, 60, "mariadbd")

    def ping(self) -> bool:
        return (
            subprocess.run(
                ["mariadb-admin", "-uroot", "-h127.0.0.1", f"-P{self.port}", "ping"],
                capture_output=True, timeout=5, check=False,
            ).returncode == 0
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def sql(self, statement: str, database: str | None = None, stdin: Path | None = None) -> None:
        cmd = ["mariadb", "-uroot", "-h127.0.0.1", f"-P{self.port}"]
        if statement:
            cmd += ["-e", statement]
        if database:
            cmd.append(database)
        if stdin is None:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            return
        with open(stdin, "rb") as fh:
            subprocess.run(cmd, stdin=fh, check=True, capture_output=True, timeout=300)


# ---------------------------------------------------------------------- the stack


@dataclass
class FaultStack:
    settings: Settings
    env: dict[str, str]
    store: VclStore
    sf: Any
    site: SeededSite
    datastore: Path
    repository: Path
    network: str
    vmhost: str
    queue: str
    run_id: str
    redis: PrivateRedis
    mariadb: PrivateMariaDB
    tmp: Path
    master: Path
    master_sums: dict[str, str] = field(default_factory=dict)

    def conn(self) -> libvirt.virConnect:
        return libvirt.open("qemu:///system")

    def short(self, index: int) -> str:
        return self.hostname(self.site.computer_ids[index]).split(".")[0]

    def hostname(self, computer_id: int) -> str:
        return str(self.one("SELECT hostname FROM computer WHERE id=:i", i=computer_id)[0])

    def one(self, sql: str, **params: Any) -> Any:
        with self.sf() as s:
            return s.execute(text(sql), params).one()

    def execute(self, sql: str, **params: Any) -> None:
        with self.sf.begin() as s:
            s.execute(text(sql), params)

    def new_request(self, index: int, image_id: int | None = None, rev_id: int | None = None) -> int:
        _req, res = create_request(
            self.sf,
            computer_id=self.site.computer_ids[index],
            image_id=image_id or self.site.image_id,
            imagerevision_id=rev_id or self.site.imagerevision_id,
            management_node_id=self.site.management_node_id,
        )
        return res

    def domains(self, short: str) -> list[str]:
        c = self.conn()
        try:
            return sorted(d.name() for d in c.listAllDomains() if d.name().startswith(short + "_"))
        finally:
            c.close()

    def add_image(self, prettyname: str, imagename: str) -> tuple[int, int]:
        """A production image + revision 0 like the seeded one (the master file is the caller's)."""
        with self.sf.begin() as s:
            s.execute(
                text(
                    "INSERT INTO image (name, prettyname, ownerid, imagetypeid, platformid, OSid, minram,"
                    " minprocnumber, minprocspeed, minnetwork, reloadtime, deleted, test, lastupdate,"
                    " forcheckout, maxinitialtime, project, size, architecture)"
                    " SELECT :name, :pretty, ownerid, imagetypeid, platformid, OSid, minram, minprocnumber,"
                    " minprocspeed, minnetwork, reloadtime, 0, 0, NOW(), forcheckout, maxinitialtime,"
                    " project, 0, architecture FROM image WHERE id = :src"
                ),
                {"name": imagename, "pretty": prettyname, "src": self.site.image_id},
            )
            image_id = int(s.execute(text("SELECT id FROM image WHERE name=:n"), {"n": imagename}).one()[0])
            s.execute(
                text(
                    "INSERT INTO imagerevision (imageid, revision, userid, datecreated, deleted, production,"
                    " imagename, autocaptured) VALUES (:i, 0, 1, NOW(), 0, 1, :n, 0)"
                ),
                {"i": image_id, "n": imagename},
            )
            rev_id = int(
                s.execute(text("SELECT id FROM imagerevision WHERE imageid=:i"), {"i": image_id}).one()[0]
            )
        return image_id, rev_id


def make_master(path: Path, size: str = "64M", data: str = "2M", pattern: int = 0x5A) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 {data}", str(path)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    path.chmod(0o444)


@pytest.fixture(scope="session")
def fstack() -> Iterator[FaultStack]:
    _USED["faults"] = True
    run_id = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix=f"vclfaults-{run_id}-"))
    rds = PrivateRedis(_free_port(), tmp / "redis")
    rds.dir.mkdir()
    mdb = PrivateMariaDB(_free_port(), tmp / "mariadb")
    mdb.dir.mkdir()
    datastore = IMAGES_ROOT / f"vcl-worker-faults-{run_id}"
    # outside the datastore: VCL finds masters with a recursive search of datastorepath
    repository = IMAGES_ROOT / f"vcl-worker-faults-{run_id}-repo"
    network = f"vclflt-{run_id}"
    engine = None
    try:
        rds.start()
        mdb.install()
        mdb.start()
        dbname = f"vclfaults_{run_id}"
        mdb.sql(f"CREATE DATABASE `{dbname}`")
        mdb.sql("", database=dbname, stdin=schema_path())
        db_url = f"mysql+pymysql://root@127.0.0.1:{mdb.port}/{dbname}"
        datastore.mkdir(mode=0o755, parents=True)
        os.chmod(datastore, 0o755)
        repository.mkdir(mode=0o755)
        os.chmod(repository, 0o755)
        ensure_isolated_network(network)
        vmhost = f"flthost{run_id}"
        redis_base = f"redis://127.0.0.1:{rds.port}"
        settings = replace(
            Settings(),
            database_url=db_url,
            broker_url=f"{redis_base}/0",
            result_backend=f"{redis_base}/1",
            lock_redis_url=f"{redis_base}/2",
            lock_dir=str(datastore / ".locks"),
            shutdown_timeout=2,
            shutdown_retry_interval=1,
            lock_wait=240,
        )
        env = {**os.environ, **settings.to_env()}
        env.pop("VCL_FAILPOINT", None)
        engine = make_engine(db_url)
        sf = make_session_factory(engine)
        store = VclStore(sf)
        spec = SiteSpec(
            datastore_path=str(datastore),
            vm_path=str(datastore),
            repository_path=str(repository),
            virtualswitch0=network,
            virtualswitch1=network,
            vmhost_hostname=f"{vmhost}.example.org",
            vm_hostnames=tuple(f"flt{run_id}v{i:02d}.example.org" for i in range(N_VMS)),
            image_prettyname=f"Fault Base {run_id}",
            image_minram=256,
            mac_seed=0x71,
        )
        site = seed_site(sf, spec)
        master = datastore / f"{site.imagename}.qcow2"
        make_master(master)
        configure(app, settings)
        runtime.configure(settings, store)
        fs = FaultStack(
            settings, env, store, sf, site, datastore, repository, network, vmhost, vmhost_queue(vmhost),
            run_id, rds, mdb, tmp, master,
        )  # fmt: skip
        fs.master_sums[str(master)] = sha256(master)
        yield fs
        # Masters never change, whatever the suite did.
        for path, digest in fs.master_sums.items():
            if Path(path).exists() and sha256(path) != digest:
                COUNTERS["masters changed"] += 1
    finally:
        cleanup_domains(f"flt{run_id}")
        remove_network(network)
        with contextlib.suppress(Exception):
            for line in Path("/proc/mounts").read_text().splitlines():
                mnt = line.split()[1]
                if mnt.startswith(str(datastore)):
                    subprocess.run(["umount", "-l", mnt], check=False)
        for d in (datastore, repository):
            if d.exists():
                for p in d.rglob("*"):
                    with contextlib.suppress(OSError):
                        os.chmod(p, 0o755 if p.is_dir() else 0o644)
                shutil.rmtree(d, ignore_errors=True)
        if engine is not None:
            engine.dispose()
        mdb.stop()
        rds.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- celery workers


Worker = CeleryWorker


def start_worker(
    fs: FaultStack, queues: list[str] | None = None, concurrency: int = 2, **env_extra: str
) -> Worker:
    return start_celery_worker(
        {**fs.env, **env_extra},
        queues or [fs.queue],
        fs.tmp,
        host=fs.vmhost,
        prefix="flt",
        concurrency=concurrency,
        extra_args=("--without-mingle", "--without-gossip"),
        timeout=60,
    )


@contextlib.contextmanager
def running_worker(fs: FaultStack, **kw: Any) -> Iterator[Worker]:
    w = start_worker(fs, **kw)
    try:
        yield w
    finally:
        w.stop()


def send(fs: FaultStack, task: str, reservation_id: int, queue: str | None = None) -> Any:
    return app.send_task(task, args=[reservation_id], queue=queue or fs.queue)


# ---------------------------------------------------------------------- checks


def loadlog(fs: FaultStack, reservation_id: int) -> list[str]:
    return [e.loadstatename for e in fs.store.loadlog(reservation_id)]


def orphan_overlays(fs: FaultStack) -> list[str]:
    host = LibvirtHost("qemu:///system")
    try:
        return [o.name for o in plan_reap(fs.sf, host, fs.vmhost).orphans]
    finally:
        host.close()


def check_loaded(
    fs: FaultStack, reservation_id: int, index: int, master: Path | None = None, state: str = "reserved"
) -> None:
    """Exactly one domain (running) and one overlay for the computer, backed by ``master``; request
    reserved/new, computer reserved, one loadimagecomplete; masters unchanged. Updates the counters."""
    COUNTERS["reservations checked"] += 1
    short = fs.short(index)
    cid = fs.site.computer_ids[index]
    req = fs.store.reservation_request(reservation_id)
    names = loadlog(fs, reservation_id)
    doms = fs.domains(short)
    overlays = sorted(p.name for p in fs.datastore.glob(f"{short}_*"))
    parts = sorted(p.name for p in fs.datastore.rglob("*.part"))
    lost = req is None or req[1:] != (state, "new") or fs.store.computer_state(cid) != "reserved"
    lost = lost or names.count("loadimagecomplete") != 1 or names.count("nodeready") != 1
    COUNTERS["reservations lost"] += int(lost)
    COUNTERS["duplicate domains"] += max(len(doms) - 1, 0)
    orphans = orphan_overlays(fs)
    COUNTERS["orphan overlays"] += len(orphans)
    assert not lost, (req, fs.store.computer_state(cid), names)
    assert len(doms) == 1, doms
    assert overlays == [f"{short}_{doms[0].rsplit('_', 1)[1]}.qcow2"], overlays
    assert parts == [], parts
    assert orphans == [], orphans
    c = fs.conn()
    try:
        assert c.lookupByName(doms[0]).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        c.close()
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(fs.datastore / overlays[0])],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert f'"full-backing-filename": "{master or fs.master}"' in info, info
    for path, digest in fs.master_sums.items():
        assert sha256(path) == digest, f"master {path} changed"
