"""One real VCL site for the vcld tests: VCL's web (php -S) and vcld, two VM hosts each with its own
``celery worker`` on its own queue, real guests. Built once per session, removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis

from tests.vcld.runners import Vcld, VclWeb, prepare_vcld, runners_present, sql
from tests.vcld.site import FIRST_IMAGENAME, BridgeSite, Host, overlay_sql
from worker.app import vmhost_queue
from worker.config import Settings
from worker.db.engine import make_engine
from worker.devkit.celery_worker import start_celery_worker
from worker.devkit.commands import venv_command
from worker.devkit.database import database_url, mariadb, mariadb_available
from worker.devkit.guest_image import ensure_guest_image
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import create_dhcp_network, remove_network
from worker.devkit.libvirt_env import IMAGES_ROOT, cleanup_domains, make_datastore, remove_datastore
from worker.devkit.require import missing_service

WORK = Path(os.environ.get("VCL_BRIDGE_WORK", "/tmp/vcl-worker-vcld"))
WEB_PORT = int(os.environ.get("VCL_BRIDGE_WEB_PORT", "18093"))
REDIS = "redis://127.0.0.1:6379"
# Broker, results and locks all in Redis DB 10: the pipeline suite's Stack default (11-13) flushes
# 11-13 whenever it builds, and other suites run at the same time on a shared host.
REDIS_DBS = (10, 10, 10)
TIMINGS: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("vcld bridge measurements")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key:58s} {value}")


@pytest.fixture(scope="module")
def bridge_site() -> Iterator[BridgeSite]:
    if not runners_present() or not mariadb_available() or shutil.which("perl") is None:
        missing_service("needs ../shared/vcl runners, MariaDB and perl")
    run = uuid.uuid4().hex[:6]
    work = WORK / run
    cleanup = contextlib.ExitStack()
    try:
        yield _build(run, work, cleanup)
    finally:
        cleanup.close()


def _build(run: str, work: Path, cleanup: contextlib.ExitStack) -> BridgeSite:
    prep = prepare_vcld(WORK / "vcld-prep")
    db = f"vclbridge_{run}"
    web = VclWeb(db=db, port=WEB_PORT, workdir=work / "web")
    cleanup.callback(mariadb, "-e", f"DROP DATABASE IF EXISTS `{db}`")
    cleanup.callback(web.stop)
    web.start()
    image = ensure_guest_image()
    conn = libvirt.open("qemu:///system")
    net = create_dhcp_network(conn, prefix=f"vb{run}")
    cleanup.callback(lambda: remove_network(libvirt.open("qemu:///system"), net.name))
    prefix = f"vb{run}"
    cleanup.callback(cleanup_domains, prefix)
    hosts = []
    for i, (cid, vmhost_id, vm_id) in enumerate(((101, 101, 102), (103, 102, 104)), 1):
        ds = make_datastore(f"vcl-worker-vcld-{run}-h{i}", IMAGES_ROOT)
        cleanup.callback(remove_datastore, ds)
        install_guest_master(image, ds, FIRST_IMAGENAME)
        hosts.append(Host(cid, vmhost_id, f"{prefix}h{i}", ds, vm_id, f"{prefix}v{i}", net.host_ip(10 + i)))
    # what run-vcld.sh puts into vcld.conf: FQDN = hostname -f
    fqdn = (
        subprocess.run(["hostname", "-f"], capture_output=True, text=True).stdout.strip() or socket.getfqdn()
    )
    sql(db, overlay_sql(fqdn, image.private_key, work / "install", net, hosts))
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
        w = start_celery_worker(
            env, [vmhost_queue(h.short)], work, host=h.short, prefix="vcld", concurrency=2
        )
        cleanup.callback(w.stop)
        workers[h.short] = w
    vcld_env = {**env, "VCL_WORKER_CLI": venv_command("vcl-worker")}
    vcld = Vcld(prep=prep, workdir=work / "vcld", db=db, fqdn=fqdn, web_port=WEB_PORT, env=vcld_env)
    cleanup.callback(vcld.stop)
    vcld.start()
    engine = make_engine(database_url(db))
    cleanup.callback(engine.dispose)
    site = BridgeSite(web, vcld, engine, hosts, workers, results, image.private_key, TIMINGS)
    site.wait(
        "vcld's first check-in",
        lambda: site.one(
            "SELECT TIMESTAMPDIFF(SECOND, lastcheckin, NOW()) < 30 FROM managementnode WHERE id=101"
        )[0],
        90,
    )
    return site
