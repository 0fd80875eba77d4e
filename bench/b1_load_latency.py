"""B1: load latency, enqueue ``vcl.load`` → SUCCESS, against a raw overlay + defineXML + create."""

from __future__ import annotations

from typing import Any

from bench.common import RawLoader, med, ratio, retrying, sync, worker_load
from bench.stack import BenchStack

TARGET = 1.3


def run(stack: BenchStack, repeat: int, concurrency: int) -> dict[str, Any]:
    stack.set_repository(False)
    stack.restore_master()
    stack.use_worker(concurrency)
    raw = RawLoader(stack)
    worker_s: list[float] = []
    raw_s: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        # Warm-up (untimed): every child opens its DB pool and libvirt connection on first use.
        for i in range(concurrency):
            stack.reset_computer(i)
            worker_load(stack, i)
        raw.load()
        raw.cleanup()
        for i in range(repeat):

            def one(i: int = i) -> None:
                idx = i % 2
                stack.reset_computer(idx)
                sync()
                order = ("raw", "worker") if i % 2 else ("worker", "raw")
                for what in order:
                    if what == "raw":
                        raw_s.append(raw.load())
                    else:
                        dt, value = worker_load(stack, idx)
                        worker_s.append(dt)
                        phases.append(value["timings"])
                raw.cleanup()

            retrying(one, lambda: (raw.cleanup(), stack.reset_computer(0), stack.reset_computer(1)),
                     raw_s, worker_s, phases)  # fmt: skip
    finally:
        raw.close()
        for i in range(max(concurrency, 2)):
            stack.reset_computer(i)
    worker_med, raw_med = med(worker_s), med(raw_s)
    phase_names = sorted(
        {k for p in phases for k in p if k.startswith("core_") or k in ("lock_wait", "load")}
    )
    return {
        "worker_s": worker_s,
        "raw_s": raw_s,
        "worker_median_s": round(worker_med, 4),
        "raw_median_s": round(raw_med, 4),
        "ratio": ratio(worker_med, raw_med),
        "target": TARGET,
        "met": worker_med / raw_med <= TARGET,
        "task_phases_s": phases,
        "task_phase_medians_s": {k: round(med([p[k] for p in phases if k in p]), 4) for k in phase_names},
        "concurrency": concurrency,
    }
