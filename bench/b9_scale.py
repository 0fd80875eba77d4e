"""B9: scale. One dispatcher, 20 VM-host queues with one Celery worker process each (``-c 1``), a VCL
database that already holds 100,000 finished reservations, and 100 / 1,000 due ``new`` requests
spread over 2 / 20 hosts: the dispatch pass, enqueue → SUCCESS throughput and p50/p99 latency.

This measures the scheduler, the queues and the database, not libvirt: the workers drive libvirt's
in-memory ``test:///default`` through the Simulated driver (real qcow2 overlays by ``qemu-img``, no
QEMU). ``-c 1`` per host keeps 20 workers (40 processes) near 3 GiB on a 2-core machine.
``python -m bench.b9_scale [--sizes 100,1000] [--hosts 2,20]`` runs it alone; the plot goes to
bench/results/b9_scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import insert, text

from bench.stack import RESULTS
from worker.db import models as m
from worker.db.seed import seed_site
from worker.devkit.images import make_master
from worker.devkit.site import host_site_spec, seed_poll_requests
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.dispatcher import dispatch_once

HOSTS = 20
# One due request per computer: 1,000 due on 2 hosts needs 500 computers on each of the first two.
# A seeded site holds at most 256 VMs (its MACs are 52:54:00:<seed>:<index>:<nic>, unique in VCL's
# schema), so those two hosts also get the computers of a second site moved onto them.
VMS_FIRST_HOSTS = 250
VMS_PER_HOST = 50
FINISHED = 100_000
TARGET_DISPATCH_S = 1.0
TASK_TIMEOUT = 1800
#: Scheduling priority of the simulated VM hosts' workers (see :func:`_start_workers`).
WORKER_NICE = 19


@dataclass(frozen=True)
class Host:
    queue: str
    computers: tuple[int, ...]
    image_id: int
    imagerevision_id: int


class _TimedApp:
    """The Celery app as the dispatcher sees it, recording when each task was enqueued."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # the sweep reads task states through the same app

    def send_task(self, name: str, *args: Any, **kw: Any) -> Any:
        result = self.app.send_task(name, *args, **kw)
        self.sent[str(kw["task_id"])] = time.time()
        return result


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def _seed(stack: Stack, seed: int, vms: int) -> Any:
    name = f"{stack.config.tag}h{seed:02d}{stack.run_id}"
    names = tuple(f"{stack.prefix}h{seed:02d}v{i:03d}.example.org" for i in range(vms))
    spec = host_site_spec(stack.datastore, "default", name, names, virtualswitch1="", mac_seed=seed,
                          image_minram=512, image_prettyname=f"Scale {seed}",
                          profile_name=f"KVM scale {seed}",
                          management_node_hostname=f"mn{seed}-{stack.run_id}.example.org")  # fmt: skip
    site = seed_site(stack.sf, spec)
    make_master(stack.datastore / f"{site.imagename}.qcow2", size_mb=64, mode=0o444)
    return name, site


def _seed_hosts(stack: Stack) -> list[Host]:
    """The stack's own VM host plus 19 more on the stack's management node, each with its own image
    and master; every NIC on test:///default's ``default`` network."""
    site = stack.site
    stack.execute("UPDATE vmprofile SET virtualswitch0='default', virtualswitch1='' WHERE id=:i",
                  i=site.vmprofile_id)  # fmt: skip
    hosts = [Host(f"vmhost.{stack.vmhost}", site.computer_ids, site.image_id, site.imagerevision_id)]
    for h in range(1, HOSTS):
        name, other = _seed(stack, h, VMS_FIRST_HOSTS if h == 1 else VMS_PER_HOST)
        hosts.append(Host(f"vmhost.{name}", other.computer_ids, other.image_id, other.imagerevision_id))
    for i in (0, 1):
        _, donor = _seed(stack, HOSTS + i, VMS_FIRST_HOSTS)
        vmhost_id = stack.one("SELECT vmhostid FROM computer WHERE id=:c", c=hosts[i].computers[0])[0]
        stack.execute("UPDATE computer SET vmhostid=:v WHERE vmhostid=:d", v=vmhost_id, d=donor.vmhost_id)
        hosts[i] = dataclasses.replace(hosts[i], computers=hosts[i].computers + donor.computer_ids)
    # seed_site adds a management node per host: the reservations all name the stack's one.
    # No DHCP host entries on the test driver's network: the simulated guests need no address.
    stack.execute("UPDATE computer SET privateIPaddress=NULL WHERE type='virtualmachine'")
    return hosts


def _insert_due(stack: Stack, hosts: list[Host], n: int) -> None:
    """``n`` due ``new`` requests (start a minute ago), one per computer, round-robin over ``hosts``."""
    picks = [(hosts[i % len(hosts)], i // len(hosts)) for i in range(n)]
    with stack.sf.begin() as s:
        now = s.execute(text("SELECT NOW()")).scalar_one()
        new = s.execute(text("SELECT id FROM state WHERE name='new'")).scalar_one()
        first = s.execute(text("SELECT COALESCE(MAX(id), 0) FROM request")).scalar_one()
        s.execute(insert(m.Request), [
            {"stateid": new, "laststateid": new, "userid": 1, "start": now - timedelta(minutes=1),
             "end": now + timedelta(hours=2), "daterequested": now} for _ in picks
        ])  # fmt: skip
        s.execute(insert(m.Reservation), [
            {"requestid": first + 1 + j, "computerid": h.computers[k], "imageid": h.image_id,
             "imagerevisionid": h.imagerevision_id, "managementnodeid": stack.site.management_node_id}
            for j, (h, k) in enumerate(picks)
        ])  # fmt: skip


def _finish_round(stack: Stack) -> None:
    """The round's reservations become finished history (complete, end still ahead) and every
    computer available again, so the next round starts from the same database shape."""
    stack.execute(
        "UPDATE request SET stateid=(SELECT id FROM state WHERE name='complete'), "
        "laststateid=(SELECT id FROM state WHERE name='reserved') "
        "WHERE stateid IN (SELECT id FROM state WHERE name IN ('reserved','pending','failed'))"
    )
    stack.execute("UPDATE computer SET stateid=(SELECT id FROM state WHERE name='available') "
                  "WHERE type='virtualmachine'")  # fmt: skip


_CpuSample = dict[str, dict[tuple[int, float], float]]


def _cpu_sample(stack: Stack) -> _CpuSample:
    """Cumulative CPU seconds (own + reaped children, e.g. qemu-img) per process of each component."""
    import psutil

    groups: dict[str, list[Any]] = {"workers": _worker_processes(stack), "mariadb": [], "redis": [],
                                    "bench process": []}  # fmt: skip
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name in ("mariadbd", "mysqld"):
            groups["mariadb"].append(proc)
        elif name == "redis-server":
            groups["redis"].append(proc)
    groups["bench process"].append(psutil.Process())
    out: _CpuSample = {}
    for group, procs in groups.items():
        out[group] = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total = t.user + t.system + t.children_user + t.children_system
                out[group][(proc.pid, proc.create_time())] = total
    return out


def _cpu_used(before: _CpuSample, after: _CpuSample) -> dict[str, float]:
    """CPU seconds each component used between two samples (a process new since ``before`` counts whole)."""
    return {
        group: round(sum(t - before.get(group, {}).get(key, 0.0) for key, t in procs.items()), 2)
        for group, procs in after.items()
    }


def one_round(stack: Stack, hosts: list[Host], n: int) -> dict[str, Any]:
    _insert_due(stack, hosts, n)
    app = _TimedApp(stack.app)
    # What `vcl-worker dispatch` resolves once: the settings and the Redis where task ids are remembered.
    settings, kv = stack.settings, redis.Redis.from_url(stack.settings.lock_redis_url)
    cpu_before = _cpu_sample(stack)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = dispatch_once(stack.store, app, stack.site.management_node_id, settings=settings, kv=kv)  # type: ignore[arg-type]
    dispatch_s, dispatch_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == n, (
        f"{len(enqueued)} of {n} enqueued: {[d for d in done if d.action != 'enqueued'][:3]}"
    )
    # The next pass (vcld's loop would run it a check-in interval later) sweeps this round's claims
    # that are still pending: its cost grows with them, so it is reported too.
    pending = int(
        stack.one("SELECT COUNT(*) FROM request WHERE stateid=(SELECT id FROM state WHERE name='pending')")[0]
    )
    t0 = time.perf_counter()
    dispatch_once(stack.store, app, stack.site.management_node_id, settings=settings, kv=kv)  # type: ignore[arg-type]
    next_pass_s = time.perf_counter() - t0
    latencies: list[float] = []
    finished_at: list[float] = []
    failures = 0
    for d in enqueued:
        res = stack.app.AsyncResult(d.task_id)
        try:
            res.get(timeout=TASK_TIMEOUT)
        except Exception:
            failures += 1
            continue
        done_at = res.date_done
        if done_at.tzinfo is None:  # Celery stores UTC
            done_at = done_at.replace(tzinfo=UTC)
        end = done_at.timestamp()
        finished_at.append(end)
        latencies.append(end - app.sent[str(d.task_id)])
    first_sent = min(app.sent.values())
    wall = max(finished_at) - first_sent if finished_at else float("nan")
    # Who used the machine's CPU during the round: if the workers hold most of it, they are the limit.
    cpu = _cpu_used(cpu_before, _cpu_sample(stack))
    _finish_round(stack)
    return {
        "reservations": n,
        "hosts": len(hosts),
        "dispatch_pass_s": round(dispatch_s, 3),
        "dispatch_pass_cpu_s": round(dispatch_cpu_s, 3),
        "next_pass_s": round(next_pass_s, 3),
        "next_pass_pending_claims": pending,
        "enqueue_to_last_success_s": round(wall, 3),
        "throughput_res_per_s": round(len(finished_at) / wall, 2) if finished_at else 0.0,
        "latency_p50_s": round(_pct(latencies, 0.5), 3),
        "latency_p99_s": round(_pct(latencies, 0.99), 3),
        "failures": failures,
        "cpu_s": cpu,
        "cpu_share": {k: round(v / sum(cpu.values()), 3) for k, v in cpu.items()}
        if sum(cpu.values())
        else {},
    }


def _start_workers(stack: Stack, hosts: list[Host], count: int) -> None:
    """One ``-c 1`` worker per VM host queue, one after the other: parallel starts deadlock in
    kombu's producer pool while all of them wait for their ping.

    On a site each worker runs on its own VM host; here all of them share this machine's cores
    with the dispatcher, so they run at nice :data:`WORKER_NICE` (with their children and the
    qemu-img they start): the dispatch pass then measures the dispatcher, not its share of a CPU
    that 20 busy hosts' workers also want. MariaDB and Redis keep serving both at normal priority."""
    import psutil

    for h in hosts[:count]:
        w = stack.start_worker(RESULTS, concurrency=1, queues=[h.queue], loglevel="WARNING", timeout=300)
        proc = psutil.Process(w.proc.pid)
        for p in [proc, *proc.children(recursive=True)]:
            p.nice(WORKER_NICE)


def run(sizes: tuple[int, ...] = (100, 1000), host_counts: tuple[int, ...] = (2, 20)) -> dict[str, Any]:
    config = StackConfig(
        tag="b9", vms=VMS_FIRST_HOSTS, redis_dbs=(14, 15, 15), shutdown_timeout=1,
        env={"VCL_LIBVIRT_URI": "test:///default", "VCL_LOG_LEVEL": "WARNING", "VCL_WAIT_FOR_GUEST": "0"},
        site={"virtualswitch1": "", "image_minram": 512},
    )  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    with open_stack(config, Stack) as stack:
        t0 = time.perf_counter()
        hosts = _seed_hosts(stack)
        seed_poll_requests(stack.sf, stack.site, finished=FINISHED, due=0)
        seeded_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _start_workers(stack, hosts, HOSTS)
        workers_s = time.perf_counter() - t0
        print(f"  B9 seeded {FINISHED} finished reservations and {HOSTS} hosts in {seeded_s:.0f} s; "
              f"{HOSTS} workers up in {workers_s:.0f} s", flush=True)  # fmt: skip
        one_round(stack, hosts[:1], 5)  # untimed warm-up: DB pools, libvirt connections
        for k in host_counts:
            for n in sizes:
                r = one_round(stack, hosts[:k], n)
                rounds.append(r)
                print(f"  B9 {n} due on {k} hosts: dispatch {r['dispatch_pass_s']:.3f} s "
                      f"(next pass {r['next_pass_s']:.3f} s, {r['next_pass_pending_claims']} pending), "
                      f"{r['throughput_res_per_s']:.1f} res/s, p50 {r['latency_p50_s']:.1f} s, "
                      f"p99 {r['latency_p99_s']:.1f} s; CPU share {r['cpu_share']}", flush=True)  # fmt: skip
        rss = _rss_mib(stack)
    big = max(rounds, key=lambda r: (r["hosts"], r["reservations"]))
    out = {
        "rounds": rounds,
        "finished_in_db": FINISHED,
        "worker_concurrency": 1,
        "workers_rss_mib": rss,
        "dispatch_pass_s_1000": big["dispatch_pass_s"],
        "target_dispatch_s": TARGET_DISPATCH_S,
        "met": big["dispatch_pass_s"] <= TARGET_DISPATCH_S,
        "dispatch_share_of_wall": round(big["dispatch_pass_s"] / big["enqueue_to_last_success_s"], 3),
    }
    plot(rounds, RESULTS / "b9_scale.png")
    return out


def _worker_processes(stack: Stack) -> list[Any]:
    """Every worker process of the stack with its children (prefork pool, qemu-img)."""
    import psutil

    procs: list[Any] = []
    for w in stack.workers:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(w.proc.pid)
            procs += [proc, *proc.children(recursive=True)]
    return procs


def _rss_mib(stack: Stack) -> float:
    return round(sum(p.memory_info().rss for p in _worker_processes(stack)) / 2**20, 0)


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for k in sorted({r["hosts"] for r in rounds}):
        rs = sorted((r for r in rounds if r["hosts"] == k), key=lambda r: r["reservations"])
        xs = [r["reservations"] for r in rs]
        axes[0].plot(xs, [r["dispatch_pass_s"] for r in rs], "o-", label=f"{k} hosts")
        axes[1].plot(xs, [r["throughput_res_per_s"] for r in rs], "o-", label=f"{k} hosts")
        axes[2].plot(xs, [r["latency_p50_s"] for r in rs], "o-", label=f"p50, {k} hosts")
        axes[2].plot(xs, [r["latency_p99_s"] for r in rs], "s--", label=f"p99, {k} hosts")
    axes[0].axhline(TARGET_DISPATCH_S, color="grey", ls=":", label="target 1 s")
    for ax, title, unit in zip(axes, ("dispatch pass", "throughput", "enqueue → SUCCESS latency"),
                               ("s", "reservations/s", "s"), strict=True):  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("due reservations (100,000 finished in the DB)")
        ax.set_ylabel(unit)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("B9 scale: 1 dispatcher, one -c 1 worker per VM host, Simulated driver")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for x in r["rounds"]:
        target = "-"
        if x["reservations"] >= 1000:
            target = f"dispatch <= 1 s {'MET' if x['dispatch_pass_s'] <= TARGET_DISPATCH_S else 'MISSED'}"
        out.append((f"B9 {x['reservations']} due on {x['hosts']} hosts (-c 1 each), 100,000 finished",
                    f"dispatch {x['dispatch_pass_s']:.3f} s (CPU {x['dispatch_pass_cpu_s']:.3f} s), "
                    f"next pass {x['next_pass_s']:.3f} s ({x['next_pass_pending_claims']} pending); "
                    f"{x['throughput_res_per_s']:.1f} res/s",
                    f"p50 {x['latency_p50_s']:.1f} s, p99 {x['latency_p99_s']:.1f} s", "-",
                    target))  # fmt: skip
    for x in r["rounds"]:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in x.get("cpu_share", {}).items())
        out.append((f"B9 CPU during the round, {x['reservations']} due on {x['hosts']} hosts", shares,
                    f"{sum(x.get('cpu_s', {}).values()):.0f} CPU s in {x['enqueue_to_last_success_s']:.0f} s",
                    "-", "-"))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.b9_scale", description=__doc__)
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--hosts", default="2,20")
    p.add_argument("--out", default=str(RESULTS / "b9.json"))
    args = p.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    hosts = tuple(int(x) for x in args.hosts.split(","))
    result = run(sizes, hosts)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for row in rows(result):
        print(" | ".join(row))
    share = result["dispatch_share_of_wall"]
    print(f"workers' RSS {result['workers_rss_mib']:.0f} MiB; dispatch pass / wall, largest round: {share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
