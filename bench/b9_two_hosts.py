"""B9H: B9 on two real hosts (issue 20). A burst of real loads split over two VM hosts against the same
burst on one host, interleaved in one run.

Host A is this machine's libvirtd (``qemu:///system``); host B a second libvirtd in its own mount and
network namespaces (:mod:`worker.devkit.second_host`) with its own datastore, DHCP network and worker
running inside its namespaces; both are seeded into one VCL database and share Redis, MariaDB and the
image repository, as a site's hosts do. Every load boots the busybox test guest (boot snapshots off,
post-load off: a load ends when the guest answers SSH) and goes through the dispatcher
(``dispatch_once``), which routes each reservation to its host's queue ``vmhost.<host>``.

- split: ``n/2`` loads on host A (its worker ``-c n/2``) and ``n/2`` on host B (``-c n/2``);
- one host: all ``n`` on host A (a ``-c n`` worker), so the total worker concurrency is ``n`` in both.
  The dispatcher routes these to ``vmhost.<A>`` too; the bench delivers them to ``vmhost.<A>.onehost``,
  a queue of the same host (``VCL_VMHOST`` = A) served by the ``-c n`` worker, so that every worker
  stays up and warm across the interleaved rounds.

Reported per arm: enqueue (first task published) → last SUCCESS (the makespan), p50/p99 of each
load's enqueue → its SUCCESS (pooled over the repeats: with ``n`` x repeat samples p99 is the
slowest), the ratio split / one host, the peak number of loads holding their computer's lock at once
(per host and in all), the machine's CPU busy share and load average. The master is in the
repository and in host A's datastore; host B copies it into its own datastore on its first load, in
an untimed warm-up round of the split (which also warms both hosts' split workers), and every timed
load is checked to boot from an overlay on its own host's master. The one-host worker gets no warm-up
round (it would add a whole burst to the run): its children's first loads open their database and
libvirt connections, well under a second of a burst of TCG boots. Timed rounds alternate one host,
split, split, one host, ...; a round that fails (say, another suite restarts libvirtd) is discarded,
run again and listed under ``discarded_rounds``.

What the ratio means here: the two "hosts" are namespaces of one 2-core machine and every guest runs
under TCG (software emulation; /dev/kvm here is kvm_pvm), so a burst of TCG boots saturates the same
two CPUs whichever host starts them: splitting adds no CPU and a ratio near 1 is the expected result.
What the split does show: the loads on both hosts run at the same time (no lock or serialization
across hosts), the dispatcher routes each reservation to its host's queue, and each host boots from
its own master copy. On separate hosts, each with its own CPUs (and KVM), a burst that saturates one
host would take about half as long split over two (ratio → 0.5); a burst that does not saturate a
host would keep a ratio near 1 while each host carries half the load.

``python -m bench.b9_two_hosts [--loads 4] [--repeat 2]`` runs it alone (results in
bench/results/b9h.json); ``python -m bench.run --only B9H`` runs it as part of the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.common import DISCARDED, med, ratio, retrying
from bench.stack import RESULTS
from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.guest_master import install_guest_master
from worker.devkit.images import qemu_img_info
from worker.devkit.libvirt_env import cleanup_domains
from worker.devkit.second_host import second_host
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.devkit.two_hosts import HostB, add_host_b
from worker.dispatcher import dispatch_once

LOADS = 4
REPEAT = 2
TASK_TIMEOUT = 900
# The stacks' 180 s for a guest to answer SSH is short for 4 TCG boots on 2 cores when other suites
# load the machine too (one trial run lost a round to it): the burst is measured, not refused.
READY_TIMEOUT_S = 600
# The benchmarks' Redis DBs (broker 14, results and locks 15); the test suites use 0-2 (the fault
# suite's own server), 7-9 (tests/hosts), 10 (tests/vcld) and 11-13 (the pipeline stack).
REDIS_DBS = (14, 15, 15)
SPLIT, ONE = "split", "one host"
A, B = "A", "B"


class _RoutedApp:
    """The Celery app as the dispatcher sees it: records when each task was published and delivers
    the tasks for ``reroute``'s queues to other queues of the same host."""

    def __init__(self, app: Any, reroute: dict[str, str]) -> None:
        self.app, self.reroute = app, reroute
        self.sent: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def send_task(self, name: str, *args: Any, **kw: Any) -> Any:
        kw["queue"] = self.reroute.get(kw["queue"], kw["queue"])
        result = self.app.send_task(name, *args, **kw)
        self.sent[str(kw["task_id"])] = time.time()
        return result


@dataclass
class _Bench:
    stack: Stack
    hb: HostB
    loads: int
    workers: dict[str, CeleryWorker]  # SPLIT+A, SPLIT+B, ONE+A
    requests: list[int] = field(default_factory=list)

    @property
    def onehost_queue(self) -> str:
        return f"{self.stack.queue}.onehost"

    def plan(self, arm: str) -> list[tuple[str, int]]:
        """(host, computer index) of each load of a round, alternating hosts in the split."""
        if arm == ONE:
            return [(A, i) for i in range(self.loads)]
        on_a, on_b = math.ceil(self.loads / 2), self.loads // 2
        return [(h, i) for i in range(on_a) for h in (A, B) if h == A or i < on_b]

    def reset(self) -> None:
        """No domain and no overlay of any computer on either host, no request left (untimed)."""
        for i in range(len(self.stack.shorts)):
            self.stack.reset_computer(i)
        datastore_b = self.hb.host.on_host(self.hb.datastore)
        for short in self.hb.shorts:
            cleanup_domains(f"{short}_", self.hb.host.uri, wait=120)
            for p in datastore_b.glob(f"{short}_*"):
                p.unlink(missing_ok=True)
        for req in self.requests:
            with contextlib.suppress(Exception):
                self.stack.store.delete_request(req)
        self.requests.clear()
        self.stack.execute("UPDATE computer SET stateid=(SELECT id FROM state WHERE name='available') "
                           "WHERE type='virtualmachine'")  # fmt: skip


def _utc(dt: Any) -> float:
    return float((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def _peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = cur = 0
    for _, step in events:
        cur += step
        peak = max(peak, cur)
    return peak


def _busy(before: Any, after: Any) -> float:
    """The machine's CPU busy share between two ``psutil.cpu_times()``."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return round(1 - idle / total, 3) if total else float("nan")


def _check_backing(b: _Bench, host: str, cow: str) -> None:
    """The load's overlay lies over its own host's master (host B never uses host A's)."""
    if host == A:
        path, master = Path(cow), b.stack.master
    else:
        path, master = b.hb.host.on_host(cow), b.hb.datastore / b.stack.master.name
    backing = Path(str(qemu_img_info(path)["full-backing-filename"]))
    assert backing == master, f"host {host}: {cow} backed by {backing}, not {master}"


def _round(b: _Bench, arm: str, *, warmup: bool = False) -> dict[str, Any]:
    """One burst: reservations created, one dispatcher pass, every task waited for. Only in a
    warm-up may a load copy the master from the repository (host B's first)."""
    b.reset()
    stack, vmhosts = b.stack, {A: b.stack.vmhost, B: b.hb.vmhost}
    host_of: dict[int, str] = {}
    for host, i in b.plan(arm):
        req, res = stack.new_request(i) if host == A else b.hb.new_reservation(i)
        b.requests.append(req)
        host_of[res] = host
    os.sync()
    app = _RoutedApp(stack.app, {stack.queue: b.onehost_queue} if arm == ONE else {})
    kv = redis.Redis.from_url(stack.settings.lock_redis_url)
    cpu0, loadavg = psutil.cpu_times(), os.getloadavg()[0]
    t0 = time.perf_counter()
    done = dispatch_once(stack.store, app, stack.site.management_node_id, settings=stack.settings, kv=kv)  # type: ignore[arg-type]
    dispatch_s = time.perf_counter() - t0
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == len(host_of), done
    # Routing: each reservation to the queue of its computer's host.
    queues = {A: stack.queue, B: b.hb.queue}
    assert all(d.queue == queues[host_of[d.reservation_id]] for d in enqueued), enqueued
    # Wait for every task before judging any, so no task of a failed round outlives it.
    results = [(d, stack.app.AsyncResult(d.task_id)) for d in enqueued]
    for _d, r in results:
        r.get(timeout=TASK_TIMEOUT, propagate=False)
    cpu = _busy(cpu0, psutil.cpu_times())
    loads: list[dict[str, Any]] = []
    for d, r in results:
        host = host_of[d.reservation_id]
        value = stack.wait_success(str(d.task_id), b.workers[arm + host], timeout=TASK_TIMEOUT)
        assert value["request_state"] == "reserved", value
        assert str(value.get("banner", "")).startswith("SSH-2.0-"), f"the load did not wait for SSH: {value}"
        assert value["vmhost"] == vmhosts[host] and (warmup or not value["master_copied"]), value
        _check_backing(b, host, str(value["disks"]["cow"]))
        t = value["timings"]
        phases = {k: v for k, v in t.items() if k.startswith("core_") or k == "lock_wait"}
        loads.append({"host": host, "sent": app.sent[str(d.task_id)], "done": _utc(r.date_done),
                      "domain_type": value["domain_type"], "master_copied": value["master_copied"],
                      "locked_at": t.get("locked_at"), "unlocked_at": t.get("unlocked_at"),
                      "phases": phases})  # fmt: skip
    for x in loads:
        x["latency"] = x["done"] - x["sent"]
    first = min(x["sent"] for x in loads)
    held = [(x["locked_at"], x["unlocked_at"]) for x in loads if x["locked_at"] and x["unlocked_at"]]
    return {
        "arm": arm,
        "loads": len(loads),
        "dispatch_pass_s": round(dispatch_s, 3),
        "makespan_s": round(max(x["done"] for x in loads) - first, 3),
        "latencies_s": [round(x["latency"], 3) for x in loads],
        "by_host": {
            h: {
                "loads": len(xs),
                "makespan_s": round(max(x["done"] for x in xs) - first, 3),
                "peak_concurrent": _peak([(x["locked_at"], x["unlocked_at"]) for x in xs if x["locked_at"]]),
            }
            for h in (A, B)
            if (xs := [x for x in loads if x["host"] == h])
        },
        "peak_concurrent": _peak(held),
        "cpu_busy": cpu,
        "loadavg_at_start": round(loadavg, 2),
        "phases": [x["phases"] for x in loads],
        "domain_type": sorted({str(x["domain_type"]) for x in loads}),
        "master_copied_on": sorted({x["host"] for x in loads if x["master_copied"]}),
    }


def _arm_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in rounds for x in r["latencies_s"]]
    keys = sorted({k for r in rounds for p in r["phases"] for k in p})
    return {
        "makespan_s": [r["makespan_s"] for r in rounds],
        "makespan_median_s": round(med([r["makespan_s"] for r in rounds]), 3),
        "latency_p50_s": round(_pct(lat, 0.5), 3),
        "latency_p99_s": round(_pct(lat, 0.99), 3),
        "samples": len(lat),
        "peak_concurrent": min(r["peak_concurrent"] for r in rounds),
        "peak_concurrent_by_host": {
            h: min(r["by_host"][h]["peak_concurrent"] for r in rounds) for h in rounds[0]["by_host"]
        },
        "cpu_busy_median": round(med([r["cpu_busy"] for r in rounds]), 3),
        "loadavg_at_start": [r["loadavg_at_start"] for r in rounds],
        "phase_medians_s": {
            k: round(med([p[k] for r in rounds for p in r["phases"] if k in p]), 3) for k in keys
        },
    }


def _start_workers(stack: Stack, hb: HostB, loads: int) -> dict[str, CeleryWorker]:
    """Host A: ``-c n/2`` on its queue (split) and ``-c n`` on ``.onehost`` (one host); host B:
    ``-c n/2`` inside its namespaces. One after the other (parallel starts deadlock in kombu)."""
    half = math.ceil(loads / 2)
    return {
        SPLIT + A: stack.start_worker(RESULTS, concurrency=half, loglevel="WARNING"),
        ONE + A: stack.start_worker(RESULTS, concurrency=loads, loglevel="WARNING",
                                    queues=[f"{stack.queue}.onehost"], env={"VCL_VMHOST": stack.vmhost}),
        SPLIT + B: hb.start_worker(RESULTS, concurrency=loads // 2),
    }  # fmt: skip


def _measure(b: _Bench, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """{arm: timed rounds}, and under "warm-up" the untimed first round of each arm."""
    rounds: dict[str, list[dict[str, Any]]] = {SPLIT: [], ONE: [], "warm-up": []}
    # Untimed warm-up: the split workers, both hosts' DHCP host entries, host B's master copy.
    r = retrying(lambda: _round(b, SPLIT, warmup=True), b.reset)
    rounds["warm-up"].append({k: r[k] for k in ("arm", "makespan_s", "master_copied_on", "domain_type")})
    print(f"  B9H warm-up (split): makespan {r['makespan_s']:.1f} s, domain type {r['domain_type']}, "
          f"master copied on {r['master_copied_on']}", flush=True)  # fmt: skip
    master_b = b.hb.host.on_host(b.hb.datastore / b.stack.master.name)
    assert master_b.is_file(), f"host B has no master copy of its own: {master_b}"
    for i in range(repeat):
        for arm in (ONE, SPLIT) if i % 2 == 0 else (SPLIT, ONE):
            retrying(lambda arm=arm: rounds[arm].append(_round(b, arm)), b.reset, rounds[arm])
            r = rounds[arm][-1]
            hosts = ", ".join(
                f"{h} {v['loads']} (peak {v['peak_concurrent']})" for h, v in r["by_host"].items()
            )
            print(f"  B9H repeat {i + 1} {arm}: makespan {r['makespan_s']:.1f} s, "
                  f"p50 {_pct(r['latencies_s'], 0.5):.1f} s, max {max(r['latencies_s']):.1f} s; "
                  f"loads {hosts}; "
                  f"CPU busy {r['cpu_busy']:.0%}, load avg {r['loadavg_at_start']}", flush=True)  # fmt: skip
    b.reset()
    return rounds


def run(repeat: int = REPEAT, loads: int = LOADS) -> dict[str, Any]:
    if loads < 2:
        raise ValueError("B9H needs at least 2 loads (one per host)")
    config = StackConfig(
        tag="b9h", vms=loads, guest=True, redis_dbs=REDIS_DBS, repository=True,
        env={"VCL_LOG_LEVEL": "WARNING", "VCL_BOOT_SNAPSHOTS": "0", "VCL_POST_LOAD": "none",
             "VCL_READY_TIMEOUT": str(READY_TIMEOUT_S)},
    )  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    discarded_before = len(DISCARDED)
    t_setup = time.perf_counter()
    with open_stack(config, Stack) as stack:
        assert stack.repository is not None and stack.guest_image is not None
        name = stack.site.imagename
        install_guest_master(stack.guest_image, stack.repository / name, name)
        with second_host("b9h", shared=(stack.repository,)) as machine:
            hb = add_host_b(stack, machine, vms=loads // 2, master=False)
            try:
                b = _Bench(stack, hb, loads, _start_workers(stack, hb, loads))
                setup_s = time.perf_counter() - t_setup
                print(f"  B9H stack, host B ({machine.name}, up in {machine.started_s:.1f} s) and 3 workers "
                      f"ready in {setup_s:.0f} s", flush=True)  # fmt: skip
                rounds = _measure(b, repeat)
            finally:
                hb.close()
    split, one = _arm_summary(rounds[SPLIT]), _arm_summary(rounds[ONE])
    return {
        "loads": loads,
        "repeat": repeat,
        "concurrency": {SPLIT: {A: math.ceil(loads / 2), B: loads // 2}, ONE: {A: loads}},
        "domain_type": rounds[SPLIT][0]["domain_type"],
        "accel": "KVM" if rounds[SPLIT][0]["domain_type"] == ["kvm"] else "TCG",
        "split": split,
        "one_host": one,
        "ratio_makespan": ratio(split["makespan_median_s"], one["makespan_median_s"]),
        "ratio_p50": ratio(split["latency_p50_s"], one["latency_p50_s"]),
        "ratio_p99": ratio(split["latency_p99_s"], one["latency_p99_s"]),
        "setup_s": round(setup_s, 1),
        "discarded_rounds": DISCARDED[discarded_before:],
        "rounds": rounds,
    }


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The B9H lines of the results table (bench/run.py)."""
    s, o, n, c = r["split"], r["one_host"], r["loads"], r["concurrency"]
    split_c = f"-c {c[SPLIT][A]} + {c[SPLIT][B]}"
    by_host = " + ".join(f"{v} on {h}" for h, v in s["peak_concurrent_by_host"].items())
    return [
        (f"B9H {n} real loads (TCG) enqueue→all SUCCESS: split over 2 hosts ({split_c}) vs 1 host (-c {n})",
         f"{s['makespan_median_s']:.1f} s", f"{o['makespan_median_s']:.1f} s one host",
         f"{r['ratio_makespan']:.2f}", "- (one 2-core machine)"),
        (f"B9H per-load enqueue→SUCCESS p50 / p99 ({s['samples']} loads each)",
         f"{s['latency_p50_s']:.1f} / {s['latency_p99_s']:.1f} s",
         f"{o['latency_p50_s']:.1f} / {o['latency_p99_s']:.1f} s one host",
         f"{r['ratio_p50']:.2f} / {r['ratio_p99']:.2f}", "-"),
        ("B9H loads running at once (peak), CPU busy", f"{s['peak_concurrent']} ({by_host}), "
         f"{s['cpu_busy_median']:.0%}", f"{o['peak_concurrent']}, {o['cpu_busy_median']:.0%}", "-", "-"),
    ]  # fmt: skip


def note(r: dict[str, Any]) -> str:
    return (
        f"B9H: both hosts are namespaces of this one machine ({os.cpu_count()} cores) and every guest runs "
        f"under {r['accel']}: the split adds no CPU, so a ratio near 1 is expected here. What it shows: the "
        f"loads on the two hosts ran at once (peak {r['split']['peak_concurrent']} of {r['loads']}: no lock "
        "or serialization across hosts), each reservation went to its host's queue, and each host booted "
        "from its own master copy (host B copied it from the repository once). On separate hosts with "
        "their own CPUs a burst that saturates one host would take about half as long split over two "
        "(ratio -> 0.5)."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.b9_two_hosts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--loads", type=int, default=LOADS, help="loads per burst (half on each host when split)")
    p.add_argument("--repeat", type=int, default=REPEAT, help="timed rounds of each arm")
    p.add_argument("--out", default=str(RESULTS / "b9h.json"))
    args = p.parse_args(argv)
    result = run(args.repeat, args.loads)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for row in rows(result):
        print(" | ".join(row))
    print(note(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
