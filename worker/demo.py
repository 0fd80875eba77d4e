"""``vcl-worker demo``: the whole VCL cycle on an embedded default that needs no configured server.

dispatch → load (``new``) → capture (``image``) → reload (the request the capture inserted) →
maintenance (``tomaintenance``), through the real Celery task path: an SQLite database created from
the models and seeded as VCL's web front end seeds a site, an in-process broker and worker, real
qemu-img, and ``qemu:///system`` when it answers (else ``test:///default``, said plainly).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worker.config import Settings, get_settings

DEMO_NETWORK = "vcl-demo"
DEMO_BRIDGE = "vcldemo0"
DEMO_DATASTORE_ROOT = Path("/var/lib/libvirt/images")


@dataclass
class StepResult:
    step: str
    task: str
    state: str
    seconds: float
    request_state: str
    computer_state: str
    detail: str


def _libvirt_uri(console: Console) -> str:
    import libvirt

    from worker.devkit.libvirt_env import connect

    forced = os.environ.get("VCL_DEMO_LIBVIRT_URI")
    if forced:
        console.print(f"[bold yellow]VCL_DEMO_LIBVIRT_URI={forced}[/]")
        return forced
    try:
        connect("qemu:///system").close()
        return "qemu:///system"
    except libvirt.libvirtError as exc:
        console.print(
            f"[bold yellow]qemu:///system is not reachable ({exc.get_error_message()}); "
            "using libvirt's in-memory test:///default driver: domains are simulated, disks are real.[/]"
        )
        return "test:///default"


def run_demo(keep: bool = False) -> int:
    # A pipe or CI log gets a wide table instead of rich's 80-column fallback.
    console = Console(width=None if sys.stdout.isatty() else 150)
    # memory:// has no host name; kombu says so on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    console.rule("[bold]vcl-worker demo: dispatch → load → capture → reload → maintenance")
    uri = _libvirt_uri(console)
    workdir = Path(tempfile.mkdtemp(prefix="vcl-demo-", dir=DEMO_DATASTORE_ROOT))
    workdir.chmod(0o755)
    datastore = workdir / "images"
    datastore.mkdir(mode=0o755)
    db_path = workdir / "vcl.sqlite"
    settings: Settings = replace(
        get_settings(),
        database_url=f"sqlite:///{db_path}",
        broker_url="memory://",
        result_backend="cache+memory://",
        lock_redis_url="memory://",
        libvirt_uri=uri,
        lock_dir=str(workdir / "locks"),
        shutdown_timeout=int(os.environ.get("VCL_SHUTDOWN_TIMEOUT", "3")),
        shutdown_retry_interval=1,
        # The demo's blank master has no OS that could answer a readiness probe.
        wait_for_guest=False,
    )
    console.print(f"libvirt: [bold]{uri}[/]   database: {db_path}   datastore: {datastore}")
    try:
        return _run_cycle(console, settings, datastore)
    finally:
        if keep:
            console.print(f"kept {workdir} and network {DEMO_NETWORK}")
        else:
            if uri.startswith("qemu"):
                from worker.devkit.libvirt_env import remove_network

                remove_network(DEMO_NETWORK, uri)
            shutil.rmtree(workdir, ignore_errors=True)


def _run_cycle(console: Console, settings: Settings, datastore: Path) -> int:
    from celery.contrib.testing.worker import start_worker

    from worker import wiring as runtime
    from worker.app import app, configure, vmhost_queue
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.seed import create_demo_schema, seed_site
    from worker.db.store import VclStore
    from worker.devkit.images import make_master
    from worker.devkit.libvirt_env import ensure_isolated_network
    from worker.devkit.site import SiteRequests, host_site_spec
    from worker.dispatcher import dispatch_once
    from worker.progress_view import wait_with_progress

    # libvirt's test driver has one network, "default"; on a real host the demo makes its own.
    switch = "default"
    if settings.libvirt_uri.startswith("qemu"):
        switch = ensure_isolated_network(DEMO_NETWORK, settings.libvirt_uri, bridge=DEMO_BRIDGE)
    engine = make_engine(settings.database_url)
    create_demo_schema(engine)
    sf = make_session_factory(engine)
    store = VclStore(sf)
    site = seed_site(sf, host_site_spec(datastore, switch, "demohost", ("demovm1.example.org",)))
    web = SiteRequests(sf=sf, site=site)
    # A small master with recognisable data (no OS: the VM idles in its firmware).
    make_master(datastore / f"{site.imagename}.qcow2", pattern=0x5A, data_mb=4, mode=0o444)
    console.print(f"seeded site: VM host demohost, computer demovm1, image {site.imagename}")

    configure(app, settings)
    runtime.configure(settings, store)
    queue = vmhost_queue("demohost")
    app.conf.task_default_queue = queue  # the embedded worker consumes the host's queue
    results: list[StepResult] = []
    computer_id = site.computer_ids[0]

    def run_step(step: str) -> bool:
        t0 = time.monotonic()
        done = dispatch_once(store, app, site.management_node_id)
        enqueued = [d for d in done if d.action == "enqueued"]
        if len(enqueued) != 1:
            results.append(
                StepResult(
                    step,
                    "-",
                    "NOT DISPATCHED",
                    0.0,
                    "-",
                    store.computer_state(computer_id),
                    "; ".join(f"{d.request_id}:{d.action} {d.reason}" for d in done),
                )
            )
            return False
        d = enqueued[0]
        console.print(f"[bold]{step}[/]: request {d.request_id} ({d.state}) → {d.task_name} on {d.queue}")
        state, value = wait_with_progress(app.AsyncResult(d.task_id), timeout=600)
        states = store.request_states(d.request_id)
        detail = value.get("detail", "") if isinstance(value, dict) else str(value)
        if isinstance(value, dict) and value.get("domain"):
            detail = f"domain {value['domain']} {detail}".strip()
        results.append(
            StepResult(
                step,
                str(d.task_name),
                state,
                time.monotonic() - t0,
                "/".join(states) if states else "(removed)",
                store.computer_state(computer_id),
                detail,
            )
        )
        return state == "SUCCESS"

    with start_worker(
        app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
        queues=[queue],
    ):
        ok = True
        web.new_request()
        ok = run_step("load (new)")
        if ok:
            web.capture_request()
            ok = run_step("capture (image)")
        if ok:
            ok = run_step("reload (inserted by capture)")
        if ok:
            web.maintenance_request()
            ok = run_step("maintenance (tomaintenance)")

    table = Table(title="vcl-worker demo summary")
    for col in ("step", "task", "result", "seconds", "request", "computer", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        colour = "green" if r.state == "SUCCESS" else "red"
        table.add_row(
            r.step,
            r.task,
            f"[{colour}]{r.state}[/]",
            f"{r.seconds:.1f}",
            r.request_state,
            r.computer_state,
            r.detail,
        )
    console.print(table)
    if ok and len(results) == 4:
        console.print("[bold green]demo cycle complete[/]")
        return 0
    console.print("[bold red]demo failed[/]")
    return 1


def main() -> int:
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_demo"]
