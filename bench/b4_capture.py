"""B4: ``vcl.capture`` of a 512 MiB COW over the 1 GiB master, against ``qemu-img convert`` of the
same chain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import TASK_TIMEOUT, med, ratio, retrying, sync, timed_cmd, worker_load
from bench.stack import BenchStack
from worker.devkit.commands import run_quiet
from worker.devkit.images import qemu_img_info, write_pattern

CAPTURE_COMPUTER = 20
TARGET = 1.1


def prepare_capture(stack: BenchStack, idx: int) -> Path:
    """A domain (powered off) whose COW holds 512 MiB of writes over the 1 GiB master."""
    stack.reset_computer(idx)
    _dt, value = worker_load(stack, idx)
    conn = stack.conn()
    try:
        conn.lookupByName(value["domain"]).destroy()
    finally:
        conn.close()
    cow = Path(value["disks"]["cow"])
    write_pattern(cow, 0xAB, "256M", "512M")
    return cow


def run(stack: BenchStack, repeat: int, concurrency: int) -> dict[str, Any]:
    stack.set_repository(False)
    stack.restore_master()
    stack.use_worker(concurrency)
    capture_s: list[float] = []
    raw_s: list[float] = []
    details: list[dict[str, Any]] = []
    idx = CAPTURE_COMPUTER
    try:
        # Warm-up (untimed), as in B3: the first big convert after heavy writes is slower.
        warm = stack.datastore / "b4-warm.qcow2"
        run_quiet(["qemu-img", "convert", "-U", str(stack.master), "-O", "qcow2", str(warm)])
        warm.unlink()

        def one_capture(rnd: int) -> None:
            cow = prepare_capture(stack, idx)
            copy = stack.datastore / f"b4-chain-{rnd}.qcow2"
            out = stack.datastore / f"b4-raw-{rnd}.qcow2"
            run_quiet(["cp", "--sparse=always", str(cow), str(copy)])  # same chain: same backing master

            def raw_convert(copy: Path = copy, out: Path = out) -> None:
                sync()
                raw_s.append(timed_cmd(["qemu-img", "convert", "-U", str(copy), "-O", "qcow2", str(out)]))
                details.append({"raw_actual_size": qemu_img_info(out)["actual-size"]})
                copy.unlink()
                out.unlink()

            def capture() -> None:
                _req, res, _rev = stack.capture_request(idx)
                sync()
                t0 = time.perf_counter()
                value = stack.send("vcl.capture", res).get(timeout=TASK_TIMEOUT)
                capture_s.append(time.perf_counter() - t0)
                assert value["request_state"] == "complete", value
                new_master = Path(value["disks"]["master"])
                info = qemu_img_info(new_master)
                assert "backing-filename" not in info
                details.append({"timings": value["timings"], "actual_size": info["actual-size"]})
                new_master.chmod(0o644)
                new_master.unlink()

            for step in (raw_convert, capture) if rnd % 2 == 0 else (capture, raw_convert):
                step()

        for rnd in range(repeat):
            retrying(lambda rnd=rnd: one_capture(rnd), lambda: stack.reset_computer(idx),
                     capture_s, raw_s, details)  # fmt: skip
    finally:
        stack.reset_computer(idx)
    cm, rm = med(capture_s), med(raw_s)
    return {
        "capture_s": capture_s,
        "raw_convert_s": raw_s,
        "capture_details": details,
        "capture_median_s": round(cm, 3),
        "raw_convert_median_s": round(rm, 3),
        "ratio": ratio(cm, rm),
        "target": TARGET,
        "met": cm / rm <= TARGET,
    }
