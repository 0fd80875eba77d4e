"""B2 + B6: a burst of reservations on one host at each worker concurrency, against the same number
of raw loads in sequence; B6 is the peak RSS of a worker child during the burst."""

from __future__ import annotations

import time
from typing import Any

from bench.common import TASK_TIMEOUT, RawLoader, RssSampler, med, ratio, retrying, sync
from bench.stack import BenchStack


def _burst(stack: BenchStack, n: int) -> tuple[float, RssSampler]:
    assert stack.worker is not None
    stack.reset_all()
    reservations = [stack.new_reservation(i) for i in range(n)]
    sync()
    sampler = RssSampler(stack.worker.proc.pid)
    sampler.sample()
    with sampler:
        t0 = time.perf_counter()
        results = [stack.send("vcl.load", r) for r in reservations]
        values = [r.get(timeout=TASK_TIMEOUT) for r in results]
        dt = time.perf_counter() - t0
    assert all(v["request_state"] == "reserved" for v in values), values
    running = stack.running_domains(stack.vm_prefix)
    assert len(running) == n, running
    return dt, sampler


def _raw_sequence(raw: RawLoader, n: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        raw.load()
    dt = time.perf_counter() - t0
    raw.cleanup()
    return dt


def run(stack: BenchStack, repeat: int, sweep: list[int], n: int = 20) -> dict[str, Any]:
    stack.set_repository(False)
    stack.restore_master()
    raw = RawLoader(stack)
    burst: dict[int, list[float]] = {c: [] for c in sweep}
    raw_s: list[float] = []
    peak_rss: dict[int, list[int]] = {c: [] for c in sweep}
    idle_rss: dict[int, list[int]] = {c: [] for c in sweep}
    try:
        for rnd in range(repeat):
            order = sweep if rnd % 2 == 0 else list(reversed(sweep))
            retrying(lambda: raw_s.append(_raw_sequence(raw, n)), raw.cleanup, raw_s)
            for c in order:

                def one(c: int = c) -> None:
                    w = stack.use_worker(c)
                    idle = RssSampler(w.proc.pid)
                    idle.sample()
                    dt, sampler = _burst(stack, n)
                    burst[c].append(dt)
                    peak_rss[c].append(max(sampler.peak.values()))
                    idle_rss[c].append(max(idle.peak.values()))
                    stack.reset_all()

                retrying(one, stack.reset_all, burst[c], peak_rss[c], idle_rss[c])
    finally:
        raw.close()
        stack.reset_all()
    raw_med = med(raw_s)
    per_c = {}
    for c in sweep:
        bm = med(burst[c])
        per_c[c] = {
            "burst_s": burst[c],
            "burst_median_s": round(bm, 3),
            "reservations_per_s": round(n / bm, 2),
            "ratio_vs_raw_sequence": ratio(bm, raw_med),
            "peak_child_rss_mib": round(max(peak_rss[c]) / 2**20, 1),
            "idle_child_rss_mib": round(med([float(x) for x in idle_rss[c]]) / 2**20, 1),
        }
    best = min(sweep, key=lambda c: per_c[c]["burst_median_s"])
    return {
        "reservations": n,
        "raw_sequence_s": raw_s,
        "raw_sequence_median_s": round(raw_med, 3),
        "raw_reservations_per_s": round(n / raw_med, 2),
        "by_concurrency": per_c,
        "best_concurrency": best,
    }
