"""B3: 10 concurrent loads whose master is only in the repository (1 GiB qcow2, all data); exactly
one copy must be made. Baselines: one ``qemu-img convert``, ``cp``, and the copy + 10 raw loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import TASK_TIMEOUT, RawLoader, med, ratio, retrying, sync, timed_cmd
from bench.stack import BenchStack
from worker.devkit.commands import run_quiet
from worker.devkit.images import qemu_img_info

TARGET = 1.2


def run(stack: BenchStack, repeat: int, concurrency: int, n: int = 10) -> dict[str, Any]:
    stack.use_worker(concurrency)
    stack.set_repository(True)
    wall: list[float] = []
    copy_convert: list[float] = []
    copy_cp: list[float] = []
    copies: list[int] = []
    timings: list[list[dict[str, float]]] = []
    copy_and_loads: list[float] = []
    scratch = stack.datastore / "b3-plain-copy.qcow2"
    convert = ["qemu-img", "convert", "-U", str(stack.repo_image), "-O", "qcow2", str(scratch)]
    raw = RawLoader(stack)
    try:
        # Warm-up (untimed): the first big copy after writing the image is slower, whoever makes it.
        run_quiet(convert)
        scratch.unlink()
        for rnd in range(repeat):

            def plain() -> None:
                scratch.unlink(missing_ok=True)
                sync()
                copy_cp.append(timed_cmd(["cp", "--sparse=auto", str(stack.repo_image), str(scratch)]))
                scratch.unlink()
                sync()
                t_copy = timed_cmd(convert)
                copy_convert.append(t_copy)
                # The floor for the whole job: that one copy, then the 10 loads done raw, in sequence.
                t0 = time.perf_counter()
                for _ in range(n):
                    raw.load(backing=scratch)
                copy_and_loads.append(t_copy + time.perf_counter() - t0)
                raw.cleanup()
                scratch.unlink()

            def distributed() -> None:
                stack.reset_all()
                stack.remove_master()
                reservations = [stack.new_reservation(i) for i in range(n)]
                sync()
                t0 = time.perf_counter()
                results = [stack.send("vcl.load", r) for r in reservations]
                values = [r.get(timeout=TASK_TIMEOUT) for r in results]
                wall.append(time.perf_counter() - t0)
                timings.append([v["timings"] for v in values])
                made = sum(1 for v in values if v.get("master_copied"))
                copies.append(made)
                assert made == 1, f"{made} copies of the master were made, expected exactly one"
                for v in values:
                    backing = qemu_img_info(v["disks"]["cow"])["full-backing-filename"]
                    assert Path(str(backing)) == stack.master, backing
                assert len(stack.running_domains(stack.vm_prefix)) == n

            def round_(rnd: int = rnd, plain: Callable[[], None] = plain,
                       distributed: Callable[[], None] = distributed) -> None:  # fmt: skip
                for step in (plain, distributed) if rnd % 2 == 0 else (distributed, plain):
                    step()

            retrying(round_, lambda: (raw.cleanup(), stack.reset_all()),
                     wall, copy_convert, copy_cp, copies, timings, copy_and_loads)  # fmt: skip
    finally:
        raw.close()
        scratch.unlink(missing_ok=True)
        stack.reset_all()
        stack.set_repository(False)
        stack.restore_master()
    wm, cm, pm = med(wall), med(copy_convert), med(copy_cp)
    return {
        "loads": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "wall_median_s": round(wm, 3),
        "plain_copy_qemu_img_convert_s": copy_convert,
        "plain_copy_qemu_img_convert_median_s": round(cm, 3),
        "plain_copy_cp_median_s": round(pm, 3),
        "copy_plus_raw_loads_s": copy_and_loads,
        "copy_plus_raw_loads_median_s": round(med(copy_and_loads), 3),
        "ratio_vs_copy_plus_raw_loads": ratio(wm, med(copy_and_loads)),
        "copies_made": copies,
        "task_timings": timings,
        "ratio": ratio(wm, cm),
        "ratio_vs_cp": ratio(wm, pm),
        "target": TARGET,
        "met": wm / cm <= TARGET,
    }
