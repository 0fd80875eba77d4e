"""``make bench`` / ``python -m bench.run [--only B1,B5,B9H] [--repeat N] [--concurrency 1,2,4]``.

Every figure is a ratio against a baseline measured in the same run (the host is shared and noisy);
each is repeated and the median reported. Writes bench/results/latest.json and load_latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import (
    b1_load_latency,
    b2_burst,
    b3_distribution,
    b4_capture,
    b5_database,
    b7_guest_ready,
    b8_restore,
    b9_scale,
    b9_two_hosts,
)
from bench.common import DISCARDED, default_concurrency
from bench.stack import RESULTS, bench_stack
from worker.devkit.libvirt_env import connect
from worker.hypervisors.domain_type import choose_domain_type

# B6 (memory) is sampled during B2; B9H is B9 on two real hosts (the second a libvirtd in namespaces).
# B7D/B8D are B7/B8 on the Debian 12 test image (systemd, OpenSSH) instead of the tiny busybox guest.
ALL = ("B1", "B2", "B3", "B4", "B5", "B7", "B8", "B7D", "B8D", "B9", "B9H")
DEFAULT_REPEAT = {"B1": 15, "B2": 2, "B3": 3, "B4": 3, "B5": 15, "B7": 3, "B8": 5, "B7D": 3, "B8D": 3,
                  "B9": 1, "B9H": 2}  # fmt: skip
DEFAULT_SWEEP = (2, 4, 6, 8)


def _version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def machine() -> dict[str, Any]:
    conn = connect()
    try:
        # The domain type the worker itself picks: kvm only with hardware virtualization (not kvm_pvm).
        choice = choose_domain_type(
            libvirt_offers=lambda kind: f"<domain type='{kind}'" in conn.getCapabilities()
        )
        libvirt_v, qemu_v = _version(conn.getLibVersion()), _version(conn.getVersion())
    finally:
        conn.close()
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "accel": "KVM" if choice.domain_type == "kvm" else "TCG",
        "accel_reason": choice.reason,
        "libvirt": libvirt_v,
        "qemu": qemu_v,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _f(x: float, unit: str = "s") -> str:
    if unit == "ms":
        return f"{x:.1f} ms"
    return f"{x:.3f} s"


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, ours, baseline, ratio, target/met) rows."""
    rows: list[tuple[str, str, str, str, str]] = []

    def met(ok: bool, target: str) -> str:
        return f"{target} {'MET' if ok else 'MISSED'}"

    if "B1" in results:
        r = results["B1"]
        rows.append(("B1 load latency (enqueue→SUCCESS vs overlay+define+create)",
                     _f(r["worker_median_s"]), _f(r["raw_median_s"]), f"{r['ratio']:.2f}",
                     met(r["met"], "<= 1.3")))  # fmt: skip
    if "B2" in results:
        r = results["B2"]
        for c, v in sorted(r["by_concurrency"].items(), key=lambda kv: int(kv[0])):
            best = " (best)" if int(c) == int(r["best_concurrency"]) else ""
            rows.append((f"B2 burst of {r['reservations']}, -c {c}{best}",
                         f"{_f(v['burst_median_s'])} = {v['reservations_per_s']:.2f} res/s",
                         f"{_f(r['raw_sequence_median_s'])} = {r['raw_reservations_per_s']:.2f} res/s",
                         f"{v['ratio_vs_raw_sequence']:.2f}", "lower is better"))  # fmt: skip
        for c, v in sorted(r["by_concurrency"].items(), key=lambda kv: int(kv[0])):
            rows.append((f"B6 peak RSS of a worker child, -c {c}", f"{v['peak_child_rss_mib']:.0f} MiB",
                         f"{v['idle_child_rss_mib']:.0f} MiB idle",
                         f"{v['peak_child_rss_mib'] / v['idle_child_rss_mib']:.2f}", "-"))  # fmt: skip
    if "B3" in results:
        r = results["B3"]
        rows.append((f"B3 {r['loads']} loads, master only in repo (1 GiB) - copies {r['copies_made']}",
                     _f(r["wall_median_s"]), f"{_f(r['plain_copy_qemu_img_convert_median_s'])} convert",
                     f"{r['ratio']:.2f}", met(r["met"], "<= 1.2")))  # fmt: skip
        rows.append(("B3 same, against cp of the file", _f(r["wall_median_s"]),
                     f"{_f(r['plain_copy_cp_median_s'])} cp", f"{r['ratio_vs_cp']:.2f}", "-"))  # fmt: skip
        rows.append(("B3 same, against the copy + 10 raw loads in sequence", _f(r["wall_median_s"]),
                     _f(r["copy_plus_raw_loads_median_s"]), f"{r['ratio_vs_copy_plus_raw_loads']:.2f}",
                     "-"))  # fmt: skip
    if "B4" in results:
        r = results["B4"]
        rows.append(("B4 capture 512 MiB COW over 1 GiB master", _f(r["capture_median_s"]),
                     f"{_f(r['raw_convert_median_s'])} convert", f"{r['ratio']:.2f}",
                     met(r["met"], "<= 1.1")))  # fmt: skip
    if "B5" in results:
        r = results["B5"]
        rows.append(("B5 statements to read a reservation", str(r["read_reservation_statements"]), "-", "-",
                     met(r["read_reservation_statements"] <= 3, "<= 3")))  # fmt: skip
        rows.append(("B5 statements per load / per capture",
                     f"{r['load_statements']} / {r['capture_statements']}", "-", "-", "-"))  # fmt: skip
        rows.append(("B5 dispatcher poll, 10,000 finished + 100 due", _f(r["poll_median_ms"], "ms"),
                     f"{_f(r['raw_select_median_ms'], 'ms')} raw SELECT",
                     f"{r['poll_median_ms'] / r['raw_select_median_ms']:.2f}",
                     met(r["poll_median_ms"] <= 50, "<= 50 ms")))  # fmt: skip
        rows.append(
            (
                "B5 find_due_requests alone",
                _f(r["find_due_requests_median_ms"], "ms"),
                f"{_f(r['raw_select_median_ms'], 'ms')} raw SELECT",
                f"{r['ratio']:.2f}",
                "-",
            )
        )
    if "B7" in results:
        rows.extend(b7_guest_ready.rows(results["B7"]))
    if "B8" in results:
        rows.extend(b8_restore.rows(results["B8"]))
    if "B7D" in results:
        rows.extend(b7_guest_ready.rows(results["B7D"]))
    if "B8D" in results:
        rows.extend(b8_restore.rows(results["B8D"]))
    if "B9" in results:
        rows.extend(b9_scale.rows(results["B9"]))
    if "B9H" in results:
        rows.extend(b9_two_hosts.rows(results["B9H"]))
    return rows


def render(rows: list[tuple[str, str, str, str, str]], markdown: bool = False) -> str:
    head = ("benchmark", "ours (median)", "baseline (median)", "ratio", "target")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head), sep, *(fmt.format(*r) for r in rows)])


def chart(b1: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs in (
        ("worker (enqueue → SUCCESS)", b1["worker_s"]),
        ("raw overlay+define+create", b1["raw_s"]),
    ):
        xs = sorted(x * 1000 for x in xs)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label}, median {sorted(xs)[len(xs) // 2]:.0f} ms")
    ax.set_xlabel("load latency (ms)")
    ax.set_ylabel("fraction of loads")
    ax.set_title(f"B1 load latency, ratio of medians {b1['ratio']:.2f} (target <= 1.3)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--only", default=",".join(ALL), help="subset of B1..B9, B7D, B8D, B9H (B6 runs with B2)")
    p.add_argument("--repeat", type=int, default=None, help="repeats for every selected benchmark")
    p.add_argument("--concurrency", default=",".join(map(str, DEFAULT_SWEEP)), help="B2 sweep")
    p.add_argument("-c", "--worker-concurrency", type=int, default=None,
                   help="concurrency for B1/B3/B4 (default: Settings.worker_concurrency)")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = p.parse_args(argv)
    only = [x.strip().upper() for x in args.only.split(",") if x.strip()]
    only = ["B2" if x == "B6" else x for x in only]
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}")
    sweep = [int(x) for x in args.concurrency.split(",")]
    conc = args.worker_concurrency or default_concurrency()

    def rep(name: str) -> int:
        return args.repeat or DEFAULT_REPEAT[name]

    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "worker_concurrency": conc, "results": {}}  # fmt: skip
    results = out["results"]
    t_start = time.monotonic()
    print(f"machine: {out['machine']}", flush=True)
    with bench_stack() as stack:
        print(f"stack {stack.run_id}: datastore {stack.datastore}, queue {stack.queue}", flush=True)
        stack.make_images()
        steps = {
            "B1": lambda: b1_load_latency.run(stack, rep("B1"), conc),
            "B2": lambda: b2_burst.run(stack, rep("B2"), sweep),
            "B3": lambda: b3_distribution.run(stack, rep("B3"), conc),
            "B4": lambda: b4_capture.run(stack, rep("B4"), conc),
            "B5": lambda: b5_database.run(stack, rep("B5")),
            # B7 boots the real guest on a stack of its own (DHCP network, guest master).
            "B7": lambda: b7_guest_ready.run(rep("B7")),
            # B8 (real guest) and B9 (20 hosts on test:///default) build stacks of their own too.
            "B8": lambda: b8_restore.run(rep("B8")),
            "B7D": lambda: b7_guest_ready.run(rep("B7D"), "debian"),
            "B8D": lambda: b8_restore.run(rep("B8D"), "debian"),
            "B9": lambda: b9_scale.run(),
            # B9H: real guests split over this host and a second libvirtd in its own namespaces.
            "B9H": lambda: b9_two_hosts.run(rep("B9H")),
        }
        for name in ALL:
            if name not in only:
                continue
            t0 = time.monotonic()
            print(f"{name} ...", flush=True)
            results[name] = steps[name]()
            results[name]["elapsed_s"] = round(time.monotonic() - t0, 1)
            print(render(table({name: results[name]})), flush=True)
    out["elapsed_s"] = round(time.monotonic() - t_start, 1)
    out["discarded_repeats"] = DISCARDED
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    if "B1" in results:
        chart(results["B1"], RESULTS / "load_latency.png")
    rows = table(results)
    notes = [b7_guest_ready.tcg_note(results[b]) for b in ("B7", "B7D") if b in results]
    notes += [b9_two_hosts.note(results["B9H"])] if "B9H" in results else []
    note = "".join(f"\n{n}\n" for n in notes)
    (RESULTS / "latest.md").write_text(render(rows, markdown=True) + "\n" + note)
    print()
    m = out["machine"]
    print(f"{m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['accel']}, "
          f"libvirt {m['libvirt']}, QEMU {m['qemu']}; worker concurrency {conc}")  # fmt: skip
    print(render(rows))
    for n in notes:
        print(n)
    print(
        f"\nresults: {args.out}, {RESULTS / 'latest.md'}" + (", load_latency.png" if "B1" in results else "")
    )
    print(f"total {out['elapsed_s']} s; repeats discarded and re-run: {len(DISCARDED)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
