"""The real stack in one process, built once for the pipeline tests, the fault suite and the bench:
a fresh MariaDB database from vcl.sql, Redis DBs, a datastore (and repository) under
/var/lib/libvirt/images, an isolated libvirt network, a seeded site with its master, and prefork
``celery worker`` subprocesses on the VM host's queue. :meth:`Stack.close` removes all of it, also
after a failed build."""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import libvirt
import redis
from celery import Celery
from celery.result import AsyncResult
from filelock import FileLock, Timeout
from sqlalchemy import Engine

from worker import wiring
from worker.app import app as global_app
from worker.app import configure, make_app, vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import seed_site
from worker.db.store import VclStore
from worker.devkit.celery_worker import CeleryWorker, start_celery_worker
from worker.devkit.database import MARIADB_PORT, create_test_database, drop_test_database
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import create_dhcp_network
from worker.devkit.guest_network import remove_network as remove_dhcp_network
from worker.devkit.guests import ensure_named_guest
from worker.devkit.images import make_master
from worker.devkit.libvirt_env import (
    IMAGES_ROOT,
    cleanup_domains,
    connect,
    ensure_isolated_network,
    make_datastore,
    remove_datastore,
    remove_network,
)
from worker.devkit.site import SiteRequests, host_site_spec

# The real guest powers off on the ACPI button in a few seconds; a capture waits up to this long.
GUEST_SHUTDOWN_TIMEOUT = 60


@dataclass(frozen=True)
class StackConfig:
    """What differs between the stacks; ``tag`` names every resource so leftovers are attributable."""

    tag: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    vms: int = 2
    redis_url: str = "redis://127.0.0.1:6379"
    # Broker, results, locks: each user of the shared Redis has its own DBs (tests 11-13, bench 14/15).
    redis_dbs: tuple[int, int, int] = (11, 12, 13)
    mariadb_port: int = MARIADB_PORT
    # A repository directory next to the datastore (not inside: masters are found by a recursive
    # search of the datastore), set as the vmprofile's repositorypath.
    repository: bool = False
    master: bool = True
    # Copy the datastore master from this image (e.g. a bootable guest) instead of a blank disk.
    master_source: Path | None = None
    # A real guest: the built test image as master (with a virtio master XML), a DHCP network whose
    # host entries pin each computer's privateIPaddress, managementnode.keys = the guest's SSH key, and
    # loads that finish only when the guest answers SSH.
    guest: bool = False
    # Which real guest when ``guest``: "tiny" (busybox, boots in ~15 s under TCG) or "debian" (the
    # Debian 12 image of :mod:`worker.devkit.debian_image`: systemd, OpenSSH; 512 MiB; ~a minute).
    guest_os: str = "tiny"
    # The blank guests have no OS and never answer ACPI: destroy them after seconds, not a minute.
    # None: 2 s for blank guests, 60 s for the real guest (it honours ACPI; destroying it after 2 s
    # would capture a disk that was never cleanly shut down).
    shutdown_timeout: int | None = None
    lock_wait: int = 240
    env: Mapping[str, str] = field(default_factory=dict)
    site: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Every computer, domain and overlay of the stack starts with it."""
        return f"{self.tag}{self.run_id}"


@dataclass(kw_only=True)
class Stack(SiteRequests):
    config: StackConfig
    settings: Settings
    env: dict[str, str]
    db_url: str
    engine: Engine
    store: VclStore
    datastore: Path
    repository: Path | None
    network: str
    vmhost: str
    queue: str
    shorts: tuple[str, ...]
    master: Path
    # This stack's own Celery app: the module-level one may be configured for another stack.
    app: Celery
    workers: list[CeleryWorker] = field(default_factory=list)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # The real guest's image (its private_key logs into every loaded guest) when config.guest.
    guest_image: GuestImage | None = None

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def prefix(self) -> str:
        return self.config.prefix

    def conn(self) -> libvirt.virConnect:
        return connect(self.settings.libvirt_uri, wait=120)

    def short(self, index: int) -> str:
        return self.shorts[index]

    def domains(self, short: str) -> list[str]:
        """Names of the VCL domains of computer ``short`` (``<short>_...``)."""
        conn = self.conn()
        try:
            return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(short + "_"))
        finally:
            conn.close()

    def send(self, task: str, reservation_id: int, queue: str | None = None) -> AsyncResult:
        return self.app.send_task(task, args=[reservation_id], queue=queue or self.queue)

    def wait_success(self, task_id: str, worker: CeleryWorker, *, timeout: float) -> dict[str, Any]:
        """The task's result once it succeeded; a failure shows its value and the worker's log."""
        result = self.app.AsyncResult(task_id)
        value = result.get(timeout=timeout, propagate=False)
        assert result.state == "SUCCESS", f"{result.state}: {value!r}\n{worker.tail()}"
        assert isinstance(value, dict)
        return value

    def start_worker(
        self,
        log_dir: Path,
        *,
        concurrency: int = 2,
        queues: Sequence[str] | None = None,
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
        timeout: float = 90,
        env: Mapping[str, str] | None = None,
    ) -> CeleryWorker:
        """A prefork worker on this stack's host queue (or ``queues``), stopped at :meth:`close` at
        the latest; ``env`` adds variables (failpoints) to the stack's environment."""
        worker = start_celery_worker(
            {**self.env, **(env or {})}, queues or [self.queue], log_dir, host=self.vmhost,
            prefix=self.config.tag, concurrency=concurrency, loglevel=loglevel, extra_args=extra_args,
            timeout=timeout,
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    @contextlib.contextmanager
    def running_worker(self, log_dir: Path, **kw: Any) -> Iterator[CeleryWorker]:
        worker = self.start_worker(log_dir, **kw)
        try:
            yield worker
        finally:
            worker.stop()

    def reset_computer(self, index: int) -> None:
        """No domain and no overlay left for computer ``index``."""
        short = self.shorts[index]
        cleanup_domains(f"{short}_", self.settings.libvirt_uri, wait=120)
        for p in self.datastore.glob(f"{short}_*"):
            p.unlink(missing_ok=True)

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` at :meth:`close` (before what the build made); a failure only warns."""
        self.cleanup.callback(_quietly, fn, *args)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        self.cleanup.close()


S = TypeVar("S", bound=Stack)


_taken_mac_seeds: set[int] = set()


def _free_mac_seed() -> int:
    """A MAC seed (52:54:00:<seed>:…) no stack of this process and no domain on the host uses.

    Capture finds its domain by MAC among all domains on the host: two live stacks with one seed
    would make it ambiguous."""
    used = set(_taken_mac_seeds)
    conn = connect()
    try:
        for dom in conn.listAllDomains(0):
            for seed in re.findall(r"<mac address='52:54:00:([0-9a-f]{2}):", dom.XMLDesc(0)):
                used.add(int(seed, 16))
    finally:
        conn.close()
    free = [seed for seed in range(0x80, 0x100) if seed not in used]
    if not free:
        raise RuntimeError("no free MAC seed 0x80-0xff: too many test domains on this host")
    seed = random.choice(free)  # noqa: S311 (test names, not secrets)
    _taken_mac_seeds.add(seed)
    return seed


def _quietly(fn: Callable[..., object], *args: Any) -> None:
    # Teardown goes on after one step fails: a leftover network must not keep a database alive.
    try:
        fn(*args)
    except Exception as exc:
        print(f"stack cleanup {getattr(fn, '__name__', fn)}{args}: {exc}", file=sys.stderr)


def _shutdown_timeout(config: StackConfig) -> int:
    if config.shutdown_timeout is not None:
        return config.shutdown_timeout
    return GUEST_SHUTDOWN_TIMEOUT if config.guest else 2


def build_stack(config: StackConfig, cls: type[S], **extra: Any) -> S:
    """Make every resource of ``config`` and return ``cls(..., **extra)``; ``close()`` removes them."""
    cleanup = contextlib.ExitStack()
    try:
        return _build(config, cls, cleanup, extra)
    except BaseException:
        cleanup.close()
        raise


@contextlib.contextmanager
def open_stack(config: StackConfig, cls: type[S], **extra: Any) -> Iterator[S]:
    stack = build_stack(config, cls, **extra)
    try:
        yield stack
    finally:
        stack.close()


#: How long a stack waits for another process's stacks to free the Redis DBs it needs.
REDIS_DB_WAIT_S = 3600.0
# Redis DBs this process's open stacks hold: (port, db) -> [file lock, number of stacks using it].
_held_dbs: dict[tuple[int, int], list[Any]] = {}


def _hold_redis_dbs(config: StackConfig, cleanup: contextlib.ExitStack) -> None:
    """A stack flushes its Redis DBs and owns their queues: two processes' stacks on the same DBs
    (two suites, or a suite and a benchmark, run at once) would flush each other's tasks. Each DB is
    held with a file lock (per server port and DB, taken in DB order) until the stack is closed, so
    the second process waits. Stacks of one process share their holds (a session stack and a
    module's stack on the same DBs run one test at a time)."""
    port = int(redis.Redis.from_url(config.redis_url).connection_pool.connection_kwargs.get("port", 6379))
    for db in sorted(set(config.redis_dbs)):
        key = (port, db)
        if key not in _held_dbs:
            lock = FileLock(os.path.join(tempfile.gettempdir(), f"vcl-worker-redis-{port}-db{db}.lock"))
            try:
                lock.acquire(timeout=REDIS_DB_WAIT_S)
            except Timeout:
                raise RuntimeError(
                    f"Redis DB {db} on port {port} stayed in use by another process's test stack "
                    f"for {REDIS_DB_WAIT_S:.0f} s"
                ) from None
            _held_dbs[key] = [lock, 0]
        _held_dbs[key][1] += 1
        cleanup.callback(_release_redis_db, key)


def _release_redis_db(key: tuple[int, int]) -> None:
    held = _held_dbs[key]
    held[1] -= 1
    if held[1] == 0:
        del _held_dbs[key]
        held[0].release()


def _build(config: StackConfig, cls: type[S], cleanup: contextlib.ExitStack, extra: dict[str, Any]) -> S:
    def defer(fn: Callable[..., object], *args: Any) -> None:
        cleanup.callback(_quietly, fn, *args)

    _hold_redis_dbs(config, cleanup)
    prefix = config.prefix
    db_url = create_test_database(f"vcl{config.tag}", port=config.mariadb_port)
    defer(drop_test_database, db_url)
    datastore = make_datastore(f"vcl-worker-{config.tag}-{config.run_id}", IMAGES_ROOT)
    defer(remove_datastore, datastore)
    repository = None
    if config.repository:
        repository = make_datastore(f"{datastore.name}-repo", IMAGES_ROOT)
        defer(remove_datastore, repository)
    guest_image = ensure_named_guest(config.guest_os) if config.guest else None
    guest_fields: dict[str, Any] = {}
    if guest_image is not None:
        conn = connect()
        dhcp = create_dhcp_network(conn, f"vcl{config.tag}")
        defer(remove_dhcp_network, conn, dhcp.name)
        network = dhcp.name
        guest_fields = {
            "vm_ip_prefix": dhcp.prefix, "vm_ip_start": 20, "virtualswitch1": "",
            "image_minram": 512 if config.guest_os == "debian" else 256,
            "management_node_keys": str(guest_image.private_key),
        }  # fmt: skip
    else:
        network = ensure_isolated_network(f"vcl{config.tag}-{config.run_id}")
        defer(remove_network, network)
    defer(cleanup_domains, prefix)
    for db in set(config.redis_dbs):
        redis.Redis.from_url(f"{config.redis_url}/{db}").flushdb()
    broker, results, locks = (f"{config.redis_url}/{db}" for db in config.redis_dbs)
    settings = replace(
        Settings(), database_url=db_url, broker_url=broker, result_backend=results, lock_redis_url=locks,
        lock_dir=str(datastore / ".locks"), shutdown_timeout=_shutdown_timeout(config),
        shutdown_retry_interval=1, lock_wait=config.lock_wait,
        # Blank masters have no OS to answer: only a real guest is waited for.
        wait_for_guest=config.guest or config.master_source is not None,
        ready_timeout=(600 if config.guest_os == "debian" else 180) if config.guest else 0,
    )  # fmt: skip
    env = {**os.environ, **settings.to_env(), **config.env}
    # A failpoint left in the caller's environment would kill every worker the stack starts.
    env.pop("VCL_FAILPOINT", None)
    engine = make_engine(db_url)
    defer(engine.dispose)
    sf = make_session_factory(engine)
    store = VclStore(sf)
    vmhost = f"{config.tag}host{config.run_id}"
    hostnames = tuple(f"{prefix}v{i:02d}.example.org" for i in range(config.vms))
    site_fields: dict[str, Any] = {
        "repository_path": str(repository) if repository else None,
        # MACs unique to this run: capture finds its domain by MAC among all domains on the host.
        "mac_seed": _free_mac_seed(),
        **guest_fields,
        **config.site,
    }
    site = seed_site(sf, host_site_spec(datastore, network, vmhost, hostnames, **site_fields))
    master = datastore / f"{site.imagename}.qcow2"
    if guest_image is not None:
        install_guest_master(guest_image, datastore, site.imagename)
    elif config.master:
        # A blank disk gets recognisable data so copies and captures can be checked; a guest must boot.
        pattern = None if config.master_source else 0x5A
        make_master(master, pattern=pattern, data_mb=2, mode=0o444, source=config.master_source)
    # In-process code (the dispatcher, the router, flows run by the bench) works on this stack.
    configure(global_app, settings)
    wiring.configure(settings, store)
    return cls(
        sf=sf, site=site, config=config, settings=settings, env=env, db_url=db_url, engine=engine,
        store=store, datastore=datastore, repository=repository, network=network, vmhost=vmhost,
        queue=vmhost_queue(vmhost), shorts=tuple(h.split(".")[0] for h in hostnames), master=master,
        app=make_app(settings), cleanup=cleanup, guest_image=guest_image, **extra,
    )  # fmt: skip
