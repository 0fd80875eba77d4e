"""One builder for every vcld test site: VCL's web (php -S) and vcld, one or two VM hosts each with its
own ``celery worker`` on its own queue, real guests; the variants are :class:`SiteOptions`.

- ``second_host``: host 2 is a real second VM host (:mod:`worker.devkit.second_host`: its own
  libvirtd in its own mount and network namespaces, its own datastore and DHCP network); its worker
  runs inside those namespaces (``VCL_LIBVIRT_URI`` = its socket, ``VCL_VMHOST`` = its name). Its
  guests are reachable only from inside it. Without it both hosts are this machine's libvirtd.
- ``repository``: a directory both hosts see at the same path, every vmprofile's ``repositorypath``;
  the first master is put there too (as a site with a repository keeps every master there).
- ``masters_on``: the hosts whose datastore gets the first master installed (the others take it from
  the repository when a reservation needs it).
- ``image``: the guest image (``ensure_guest_image`` or another builder of a :class:`GuestImage`).
- ``os_name``: the OS row of image 101: the runner's probe module (:data:`PROBE_OS`) or one of
  ``vcl.sql``'s rows (e.g. ``vmwareubuntu`` = ``VCL::Module::OS::Linux::Ubuntu``).
- ``vm_ram``: ``computer.RAM`` of each host's VM; VCL's web allocates the smallest computer that
  fits first (``isAvailable``: ``ORDER BY RAM, procspeed * procnumber, network``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import redis
from filelock import FileLock

from tests.vcld.runners import Vcld, VclWeb, prepare_vcld, runners_present, sql
from tests.vcld.site import FIRST_IMAGENAME, PROBE_OS, BridgeSite, Host, overlay_sql
from worker.app import vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine
from worker.devkit.celery_worker import start_celery_worker
from worker.devkit.commands import venv_command
from worker.devkit.database import database_url, mariadb, mariadb_available
from worker.devkit.guest_image import GuestImage, ensure_guest_image
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import create_dhcp_network, remove_network
from worker.devkit.libvirt_env import (
    IMAGES_ROOT,
    cleanup_domains,
    make_datastore,
    remove_datastore,
    system_available,
)
from worker.devkit.require import missing_service
from worker.devkit.second_host import SecondHost, start_second_host

WORK = Path(os.environ.get("VCL_BRIDGE_WORK", "/tmp/vcl-worker-vcld"))
WEB_PORT = int(os.environ.get("VCL_BRIDGE_WEB_PORT", "18093"))
REDIS = "redis://127.0.0.1:6379"
# Broker, results and locks all in one Redis DB, 10 by default: the pipeline suite's Stack default
# (11-13) flushes 11-13 whenever it builds, and other suites run at the same time on a shared host.
REDIS_DB = int(os.environ.get("VCL_BRIDGE_REDIS_DB", "10"))
REDIS_DBS = (REDIS_DB, REDIS_DB, REDIS_DB)
HOLD_WAIT_S = 3600.0
# (host computer, vmhost, VM computer) of host 1 (seed.sql's) and host 2
IDS = ((101, 101, 102), (103, 102, 104))


@dataclass(frozen=True)
class SiteOptions:
    tag: str = "vb"
    hosts: int = 2
    second_host: bool = False
    repository: bool = False
    masters_on: tuple[int, ...] | None = None  # host indexes (0-based); None: every host
    image: Callable[[], GuestImage] = ensure_guest_image
    os_name: str = PROBE_OS
    minram: int = 512
    vm_ram: tuple[int, ...] = (2048, 2048)


def open_site(options: SiteOptions, timings: dict[str, Any]) -> Iterator[BridgeSite]:
    """Build the site of ``options`` (skipped when VCL's runners, MariaDB, perl or libvirt are
    missing), yield it, remove everything afterwards."""
    if not runners_present() or not mariadb_available() or shutil.which("perl") is None:
        missing_service("needs ../shared/vcl runners, MariaDB and perl")
    if not system_available():
        missing_service("qemu:///system is not available")
    run = uuid.uuid4().hex[:6]
    cleanup = contextlib.ExitStack()
    try:
        yield build_site(options, run, WORK / run, cleanup, timings)
    finally:
        cleanup.close()


def _hold(cleanup: contextlib.ExitStack, name: str) -> None:
    """A file lock held until the site is removed, so that a second process waits for it: one vcld
    site per machine (vcld decides that a reservation "is already being processed" when *any*
    ``vcld`` process on the machine is named after its request id, so two sites' vcld block each
    other's requests of the same id for minutes), and the Redis DB (the lock the devkit's stacks take
    too: a site flushes it)."""
    lock = FileLock(os.path.join(tempfile.gettempdir(), f"vcl-worker-{name}.lock"))
    lock.acquire(timeout=HOLD_WAIT_S)
    cleanup.callback(lock.release)


def _fqdn() -> str:
    """What run-vcld.sh puts into vcld.conf: FQDN = hostname -f."""
    out = subprocess.run(["hostname", "-f"], capture_output=True, text=True).stdout.strip()
    return out or socket.getfqdn()


def _repository(cleanup: contextlib.ExitStack, run: str) -> Path:
    path = make_datastore(f"vcl-worker-vcld-{run}-repo", IMAGES_ROOT)
    cleanup.callback(remove_datastore, path)
    return path


def _second_host(cleanup: contextlib.ExitStack, tag: str, shared: tuple[Path, ...]) -> SecondHost:
    machine = start_second_host(tag, shared=shared)
    cleanup.callback(machine.stop)
    return machine


def _host(
    options: SiteOptions, cleanup: contextlib.ExitStack, run: str, i: int, machine: SecondHost | None
) -> Host:
    """Host ``i`` (0-based): its datastore and DHCP network on its own libvirtd."""
    cid, vmhost_id, vm_id = IDS[i]
    prefix = f"{options.tag}{run}"
    if machine is None:
        ds = make_datastore(f"vcl-worker-vcld-{run}-h{i + 1}", IMAGES_ROOT)
        cleanup.callback(remove_datastore, ds)
        conn = libvirt.open("qemu:///system")
    else:
        ds = machine.make_datastore(f"vcl-worker-vcld-{run}-h{i + 1}")  # removed with the machine
        conn = machine.conn()
    try:
        net = create_dhcp_network(conn, prefix=f"{prefix}h{i + 1}")
    finally:
        conn.close()
    if machine is None:
        cleanup.callback(lambda: remove_network(libvirt.open("qemu:///system"), net.name))
    ram = options.vm_ram[i] if i < len(options.vm_ram) else 2048
    return Host(
        cid, vmhost_id, f"{prefix}h{i + 1}", ds, vm_id, f"{prefix}v{i + 1}", net.host_ip(10 + i + 1),
        network=net.name, host_address=net.host_ip(1), vm_ram=ram, machine=machine,
    )  # fmt: skip


def build_site(
    options: SiteOptions, run: str, work: Path, cleanup: contextlib.ExitStack, timings: dict[str, Any]
) -> BridgeSite:
    _hold(cleanup, "vcld-site")
    _hold(cleanup, f"redis-6379-db{REDIS_DB}")
    prep = prepare_vcld(WORK / "vcld-prep")
    db = f"vclbridge_{run}"
    web = VclWeb(db=db, port=WEB_PORT, workdir=work / "web")
    cleanup.callback(mariadb, "-e", f"DROP DATABASE IF EXISTS `{db}`")
    cleanup.callback(web.stop)
    web.start()
    image = options.image()
    cleanup.callback(cleanup_domains, f"{options.tag}{run}")
    repository = _repository(cleanup, run) if options.repository else None
    if repository is not None:
        install_guest_master(image, repository, FIRST_IMAGENAME)
    hosts: list[Host] = []
    for i in range(options.hosts):
        machine = None
        if i == 1 and options.second_host:
            machine = _second_host(cleanup, options.tag, (repository,) if repository else ())
        hosts.append(_host(options, cleanup, run, i, machine))
    for i, h in enumerate(hosts):
        if options.masters_on is None or i in options.masters_on:
            install_guest_master(image, h.here(h.datastore), FIRST_IMAGENAME)
    fqdn = _fqdn()
    sql(db, overlay_sql(
        fqdn, image.private_key, work / "install", hosts, repository=repository, os_name=options.os_name,
        minram=options.minram, mac_seed=int(run[:2], 16),
    ))  # fmt: skip
    for n in set(REDIS_DBS):
        redis.Redis.from_url(f"{REDIS}/{n}").flushdb()
    broker, results, locks = (f"{REDIS}/{n}" for n in REDIS_DBS)
    settings = replace(
        Settings(), database_url=database_url(db), broker_url=broker, result_backend=results,
        lock_redis_url=locks, lock_dir=str(hosts[0].datastore / ".locks"), shutdown_timeout=60,
        shutdown_retry_interval=10, ready_timeout=300, worker_concurrency=2,
    )  # fmt: skip
    env = {**os.environ, **settings.to_env()}
    env.pop("VCL_FAILPOINT", None)
    workers = {}
    for h in hosts:
        host_env = {**env, "VCL_VMHOST": h.short, "VCL_LIBVIRT_URI": h.uri,
                    "VCL_LOCK_DIR": str(h.datastore / ".locks")}  # fmt: skip
        launcher = h.machine.command([]) if h.machine is not None else []
        w = start_celery_worker(
            host_env, [vmhost_queue(h.short)], work, host=h.short, prefix="vcld", concurrency=2,
            launcher=launcher,
        )  # fmt: skip
        cleanup.callback(w.stop)
        workers[h.short] = w
    vcld_env = {**env, "VCL_WORKER_CLI": venv_command("vcl-worker")}
    vcld = Vcld(prep=prep, workdir=work / "vcld", db=db, fqdn=fqdn, web_port=WEB_PORT, env=vcld_env)
    cleanup.callback(vcld.stop)
    vcld.start()
    engine = make_engine(database_url(db))
    cleanup.callback(engine.dispose)
    site = BridgeSite(
        web, vcld, engine, hosts, workers, results, image.private_key, timings, repository=repository
    )
    site.wait(
        "vcld's first check-in",
        lambda: site.one(
            "SELECT TIMESTAMPDIFF(SECOND, lastcheckin, NOW()) < 30 FROM managementnode WHERE id=101"
        )[0],
        90,
    )
    return site
