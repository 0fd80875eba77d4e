"""``vcl-worker demo``: the whole VCL cycle on an embedded default that needs no configured server.

dispatch → load (``new``) → capture (``image``) → reload (the request the capture inserted) →
maintenance (``tomaintenance``), through the real Celery task path: an SQLite database created from
the models and seeded as VCL's web front end seeds a site, an in-process broker and worker, real
qemu-img, and ``qemu:///system`` when it answers (else ``test:///default``, said plainly).

On ``qemu:///system`` the master is the project's real test guest (built offline, cached): the load
finishes only when the guest answers SSH at the computer's ``privateIPaddress`` (pinned by a DHCP host
entry on a private network), and the demo prints that address, the SSH banner and the time to it; the
capture shuts the live guest down by ACPI. Only with libvirt's test driver (no libvirtd) does the demo
fall back to a blank master whose simulated domains have no OS to answer.

``VCL_DEMO_GUEST=debian`` (``make demo GUEST=debian``) runs the same cycle on the Debian 12 test image
(``worker/devkit/debian_image.py``: systemd, OpenSSH, ifupdown; built with mmdebstrap, ~2.5 min the
first time, then cached) instead of the tiny busybox guest (``tiny``, the default). Under TCG each of
its two boots (load, reload) takes minutes, not seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.config import Settings, get_settings
from worker.timing import Stopwatch

DEMO_NETWORK = "vcl-demo"
DEMO_DATASTORE_ROOT = Path("/var/lib/libvirt/images")
DEMO_SHORT = "demovm1"
# The real guest powers off on ACPI in seconds; the blank (simulated) one never does.
GUEST_SHUTDOWN_TIMEOUT = 60
GUEST_READY_TIMEOUT = 180


@dataclass(frozen=True)
class DemoGuest:
    """Which real guest the demo loads (``VCL_DEMO_GUEST``) and the budgets its boots need."""

    name: str
    title: str
    ready_timeout: int  # seconds to SSH (VCL_READY_TIMEOUT overrides it)
    shutdown_timeout: int  # seconds the capture's ACPI shutdown may take
    minram: int  # MB (image.minram)
    prettyname: str  # image.prettyname (the image name VCL derives from it shows in the summary)


DEMO_GUESTS = {
    "tiny": DemoGuest(
        "tiny",
        "the tiny busybox test guest",
        GUEST_READY_TIMEOUT,
        GUEST_SHUTDOWN_TIMEOUT,
        256,
        "CentOS 7 Base",
    ),
    # systemd under TCG on a busy 2-core host: SSH after ~1-3.5 min, ACPI off in up to ~30 s.
    "debian": DemoGuest("debian", "the Debian 12 test image", 900, 180, 512, "Debian 12"),
}


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


def demo_guest(console: Console) -> DemoGuest | None:
    """The guest ``VCL_DEMO_GUEST`` names (``tiny`` when unset); None, said, for an unknown name."""
    name = (os.environ.get("VCL_DEMO_GUEST") or "tiny").strip().lower()
    if name not in DEMO_GUESTS:
        console.print(f"[bold red]VCL_DEMO_GUEST={name!r}: use one of {', '.join(DEMO_GUESTS)}[/]")
        return None
    return DEMO_GUESTS[name]


def run_demo(*, keep: bool = False) -> int:
    # A pipe or CI log gets a wide table instead of rich's 80-column fallback.
    console = Console(width=None if sys.stdout.isatty() else 150)
    guest = demo_guest(console)
    if guest is None:
        return 2
    # memory:// has no host name; kombu says so on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    console.rule("[bold]vcl-worker demo: dispatch → load → capture → reload → maintenance")
    uri = _libvirt_uri(console)
    real = uri.startswith("qemu")
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
        shutdown_timeout=int(
            os.environ.get("VCL_SHUTDOWN_TIMEOUT", str(guest.shutdown_timeout if real else 3))
        ),
        shutdown_retry_interval=1 if not real else 5,
        # The real guest is waited for (SSH banner); the simulated domains have no OS to answer.
        wait_for_guest=real,
        ready_timeout=int(os.environ.get("VCL_READY_TIMEOUT", str(guest.ready_timeout))),
    )
    console.print(f"libvirt: [bold]{uri}[/]   database: {db_path}   datastore: {datastore}")
    cleanup: list[Callable[[], object]] = []
    try:
        site = _demo_site(console, settings, datastore, cleanup, guest)
        return _run_cycle(console, settings, site)
    finally:
        if keep:
            console.print(f"kept {workdir} and the demo network")
        else:
            for undo in reversed(cleanup):
                undo()
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class DemoSite:
    site: Any  # worker.db.seed.SeededSite
    store: Any  # worker.db.store.VclStore
    web: Any  # worker.devkit.site.SiteRequests
    _: KW_ONLY
    guest: bool  # the real guest (its address and banner are reported), or a blank master


def _demo_site(
    console: Console,
    settings: Settings,
    datastore: Path,
    cleanup: list[Callable[[], object]],
    guest: DemoGuest,
) -> DemoSite:
    """The SQLite VCL database seeded with one VM host and computer ``demovm1``; its master is the
    real ``guest`` on ``qemu:///system`` (a DHCP network pins the computer's address), else blank."""
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.seed import create_demo_schema, seed_site
    from worker.db.store import VclStore
    from worker.devkit.images import make_master
    from worker.devkit.site import SiteRequests, host_site_spec

    engine = make_engine(settings.database_url)
    create_demo_schema(engine)
    sf = make_session_factory(engine)
    hostnames = (f"{DEMO_SHORT}.example.org",)
    if not settings.libvirt_uri.startswith("qemu"):
        # libvirt's test driver has one network, "default", and simulated domains: a blank master.
        site = seed_site(sf, host_site_spec(datastore, "default", "demohost", hostnames))
        make_master(datastore / f"{site.imagename}.qcow2", pattern=0x5A, data_mb=4, mode=0o444)
        console.print(f"seeded site: VM host demohost, computer {DEMO_SHORT}, image {site.imagename} (blank)")
        return DemoSite(site, VclStore(sf), SiteRequests(sf=sf, site=site), guest=False)

    from worker.devkit.guest_master import install_guest_master
    from worker.devkit.guest_network import create_dhcp_network, remove_network
    from worker.devkit.libvirt_env import cleanup_domains, connect

    building = Stopwatch()
    from worker.devkit.guests import ensure_named_guest

    if guest.name == "debian":
        console.print("Debian 12 test image: building it with mmdebstrap when not cached (~2.5 min) ...")
    image = ensure_named_guest(guest.name)
    how = "cached" if image.cached else f"built in {building.elapsed():.0f} s"
    console.print(
        f"{guest.title}: {image.path} ({how}; kernel {image.kernel_version}, SSH key {image.private_key}); "
        f"readiness budget {settings.ready_timeout} s"
    )
    conn = connect(settings.libvirt_uri)
    net = create_dhcp_network(conn, DEMO_NETWORK)
    cleanup.append(conn.close)
    cleanup.append(lambda: remove_network(conn, net.name))
    # Whatever a failed step left behind (a finished cycle leaves nothing: maintenance removes it).
    cleanup.append(lambda: cleanup_domains(f"{DEMO_SHORT}_", settings.libvirt_uri))
    spec = host_site_spec(
        datastore, net.name, "demohost", hostnames, virtualswitch1="", vm_ip_prefix=net.prefix,
        vm_ip_start=20, image_minram=guest.minram, management_node_keys=str(image.private_key),
        image_prettyname=guest.prettyname,
    )  # fmt: skip
    site = seed_site(sf, spec)
    install_guest_master(image, datastore, site.imagename)
    console.print(
        f"seeded site: VM host demohost, computer {DEMO_SHORT} (privateIPaddress {net.host_ip(20)} on "
        f"network {net.name}, {net.subnet}), image {site.imagename} = {guest.title}"
    )
    return DemoSite(site, VclStore(sf), SiteRequests(sf=sf, site=site), guest=True)


def _report_guest(console: Console, value: Any, seconds: float) -> bool:
    """What a VCL user gets from the load: where the guest answers, what, and after how long;
    False when the load reported no answering guest."""
    from worker.hypervisors.domain_type import choose_domain_type

    if not isinstance(value, dict) or not value.get("banner"):
        console.print(f"[bold red]the load reported no answering guest: {value!r}[/]")
        return False
    kind = str(value.get("domain_type") or "")
    accel = "KVM" if kind == "kvm" else "TCG, software emulation"
    console.print(f"guest address: [bold]{value['address']}[/] (computer.privateIPaddress)")
    console.print(f"SSH banner: [bold]{value['banner']}[/] on port {value['port']}")
    console.print(f"time to SSH: [bold]{seconds:.1f} s[/] from dispatch (the load finishes when SSH answers)")
    console.print(f"domain type: [bold]{kind}[/] ({accel}): {choose_domain_type().reason}")
    return True


def _run_cycle(console: Console, settings: Settings, demo: DemoSite) -> int:
    from celery.contrib.testing.worker import start_worker

    from worker import wiring as runtime
    from worker.app import app, configure, vmhost_queue
    from worker.dispatcher import dispatch_once
    from worker.progress_view import wait_with_progress

    site, store, web = demo.site, demo.store, demo.web
    if not demo.guest:
        console.print(
            f"[bold yellow]{settings.libvirt_uri}: the domains are simulated and have no OS; there is "
            "no guest address, SSH banner or time to SSH to show.[/]"
        )
    configure(app, settings)
    runtime.configure(settings, store)
    kv = runtime.lock_redis()  # the embedded worker's too: task ids the dispatcher remembers land there
    queue = vmhost_queue("demohost")
    app.conf.task_default_queue = queue  # the embedded worker consumes the host's queue
    results: list[StepResult] = []
    computer_id = site.computer_ids[0]

    def run_step(step: str, on_success: Callable[[Any, float], bool] | None = None) -> bool:
        step_clock = Stopwatch()
        done = dispatch_once(store, app, site.management_node_id, settings=settings, kv=kv)
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
        # A step may wait a whole readiness budget for its guest, plus the copies around it.
        step_timeout = max(600, settings.ready_timeout + settings.shutdown_timeout + 300)
        state, value = wait_with_progress(app.AsyncResult(d.task_id), timeout=step_timeout)
        seconds = step_clock.elapsed()
        states = store.request_states(d.request_id)
        detail = value.get("detail", "") if isinstance(value, dict) else str(value)
        if isinstance(value, dict) and value.get("domain"):
            detail = f"domain {value['domain']} {detail}".strip()
        if isinstance(value, dict) and value.get("banner"):
            detail = f"{detail}; {value['address']} answered {value['banner']}".strip("; ")
        if isinstance(value, dict) and "core_shutdown" in value.get("timings", {}):
            detail = f"{detail}; ACPI shutdown {value['timings']['core_shutdown']:.1f} s".strip("; ")
        results.append(
            StepResult(
                step,
                str(d.task_name),
                state,
                seconds,
                "/".join(states) if states else "(removed)",
                store.computer_state(computer_id),
                detail,
            )
        )
        if state == "SUCCESS" and on_success is not None:
            return on_success(value, seconds)
        return state == "SUCCESS"

    def report(value: Any, seconds: float) -> bool:
        return _report_guest(console, value, seconds) if demo.guest else True

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
        ok = run_step("load (new)", report)
        if ok:
            web.capture_request()
            ok = run_step("capture (image)")
        if ok:
            ok = run_step("reload (inserted by capture)", report)
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
    return run_demo(keep=False)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_demo"]
