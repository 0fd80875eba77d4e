"""B7: enqueue ``vcl.load`` → the real guest answers SSH, against the raw floor of the same boot.

Ours: a ``new`` reservation enqueued to a prefork worker whose load finishes only when the guest
answers with an ``SSH-2.0-`` banner at ``computer.privateIPaddress`` (post-load off, so both sides stop
at the banner); seconds until the task is SUCCESS. Also reported, without a target: the same with the
default SSH post-load (hostname, currentimage.txt) that a VCL user gets.

Raw floor: ``qemu-img create`` overlay + ``defineXML`` + ``create`` → the SSH banner, one process, with
the very domain XML the worker generated for that computer (same guest, disk, NIC, MAC and address on
the same DHCP network, same domain type, same memory), polled like the worker polls (0.25 s).

Both boot cold: boot snapshots are off in the benchmark workers. Its own real-guest stack (the built
test guest as master, a DHCP network, Redis DBs 14/15); ``python -m bench.b7_guest_ready [--repeat N]``
runs it alone; ``--guest debian`` (B7D in ``make bench``) boots the Debian 12 test image
(systemd, OpenSSH) instead of the tiny busybox guest. On the development machines /dev/kvm is
paravirtual (kvm_pvm): the domain type is ``qemu``, i.e. TCG software emulation, and every figure here
is a TCG figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import libvirt

from bench.common import med, ratio
from bench.stack import RESULTS
from worker.app import vmhost_of_queue
from worker.devkit.commands import run_quiet
from worker.devkit.stack import Stack, StackConfig, open_stack
from worker.hypervisors.domain_type import choose_domain_type
from worker.hypervisors.readiness import wait_for_port

TARGET = 1.05
TASK_TIMEOUT = 400
READY_DEADLINE = 180.0
DEBIAN_DEADLINE = 600.0  # the Debian guest's boot under TCG on a busy 2-core host
INDEX = 0  # the computer every load of B7 uses (one at a time: the host has two cores)


def _ip(stack: Stack) -> str:
    return str(
        stack.one("SELECT privateIPaddress FROM computer WHERE id=:i", i=stack.site.computer_ids[INDEX])[0]
    )


def _worker_load(stack: Stack, queue: str) -> tuple[float, dict[str, Any]]:
    """Enqueue → SUCCESS of a ``new`` reservation on a computer without a domain."""
    stack.reset_computer(INDEX)
    res = stack.new_reservation(INDEX)
    os.sync()
    t0 = time.perf_counter()
    value = stack.send("vcl.load", res, queue=queue).get(timeout=TASK_TIMEOUT + stack.settings.ready_timeout)
    dt = time.perf_counter() - t0
    assert value["request_state"] == "reserved", value
    assert str(value.get("banner", "")).startswith("SSH-2.0-"), f"the load did not wait for SSH: {value}"
    assert value["address"] == _ip(stack), value
    return dt, value


class RawGuestLoader:
    """The raw floor: overlay + defineXML + create of the worker's own domain XML, then the banner."""

    def __init__(self, stack: Stack, xml: str, cow: Path, address: str) -> None:
        self.stack, self.xml, self.cow, self.address = stack, xml, cow, address
        self.conn = stack.conn()

    def load(self) -> tuple[float, str]:
        self.stack.reset_computer(INDEX)
        os.sync()
        t0 = time.perf_counter()
        run_quiet(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.stack.master),
                   str(self.cow)])  # fmt: skip
        dom = self.conn.defineXML(self.xml)
        dom.create()
        deadline = DEBIAN_DEADLINE if self.stack.config.guest_os == "debian" else READY_DEADLINE
        ready = wait_for_port(self.address, 22, deadline=deadline, expect_ssh=True)
        return time.perf_counter() - t0, ready.banner

    def close(self) -> None:
        self.stack.reset_computer(INDEX)
        self.conn.close()


def _template(stack: Stack, domain: str) -> str:
    conn = stack.conn()
    try:
        return str(conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()


def run(repeat: int = 3, guest_os: str = "tiny") -> dict[str, Any]:
    choice = choose_domain_type()
    accel = "KVM" if choice.domain_type == "kvm" else "TCG"
    print(f"  B7 ({guest_os} guest) domain type {choice.domain_type} ({accel}): {choice.reason}", flush=True)
    config = StackConfig(
        tag="b7d" if guest_os == "debian" else "b7", vms=1, guest=True, guest_os=guest_os,
        redis_dbs=(14, 15, 15), env={"VCL_LOG_LEVEL": "WARNING", "VCL_BOOT_SNAPSHOTS": "0"},
    )  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open_stack(config, Stack) as stack:
        postload_queue = stack.queue + ".postload"
        stack.start_worker(RESULTS, concurrency=1, loglevel="WARNING", env={"VCL_POST_LOAD": "none"})
        # Same VM host through a queue of its own (so VCL_VMHOST).
        host_env = {"VCL_VMHOST": str(vmhost_of_queue(stack.queue))}
        stack.start_worker(RESULTS, concurrency=1, loglevel="WARNING", queues=[postload_queue], env=host_env)
        # Untimed warm-up of both workers (DB pools, libvirt connections, the DHCP host entry); the
        # first load's domain XML is the raw floor's.
        _dt, first = _worker_load(stack, stack.queue)
        _worker_load(stack, postload_queue)
        raw = RawGuestLoader(
            stack, _template(stack, first["domain"]), Path(first["disks"]["cow"]), _ip(stack)
        )
        ours_s: list[float] = []
        post_s: list[float] = []
        raw_s: list[float] = []
        phases: list[dict[str, float]] = []
        banner, domain_type = "", str(first["domain_type"])
        try:
            for i in range(repeat):
                order = ("raw", "ours", "post") if i % 2 == 0 else ("post", "ours", "raw")
                for what in order:
                    if what == "raw":
                        dt, banner = raw.load()
                        raw_s.append(dt)
                    else:
                        dt, value = _worker_load(stack, stack.queue if what == "ours" else postload_queue)
                        assert value["domain_type"] == domain_type, value
                        (ours_s if what == "ours" else post_s).append(dt)
                        if what == "ours":
                            phases.append(value["timings"])
                print(f"  B7 repeat {i + 1}: ours {ours_s[-1]:.2f} s, with post-load {post_s[-1]:.2f} s, "
                      f"raw {raw_s[-1]:.2f} s ({domain_type})", flush=True)  # fmt: skip
        finally:
            raw.close()
    ours_med, post_med, raw_med = med(ours_s), med(post_s), med(raw_s)
    keys = sorted({k for p in phases for k in p if k.startswith("core_") or k == "lock_wait"})
    return {
        "guest_os": guest_os,
        "domain_type": domain_type,
        "accel": "KVM" if domain_type == "kvm" else "TCG",
        "domain_type_reason": choice.reason,
        "banner": banner,
        "ours_s": ours_s,
        "ours_with_post_load_s": post_s,
        "raw_s": raw_s,
        "ours_median_s": round(ours_med, 3),
        "ours_with_post_load_median_s": round(post_med, 3),
        "raw_median_s": round(raw_med, 3),
        "ratio": ratio(ours_med, raw_med),
        "ratio_with_post_load": ratio(post_med, raw_med),
        "target": TARGET,
        "met": ours_med / raw_med <= TARGET,
        "task_phase_medians_s": {k: round(med([p[k] for p in phases if k in p]), 3) for k in keys},
        "repeat": repeat,
    }


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The B7 lines of the results table (bench/run.py)."""
    kind = f"{r['domain_type']} = {r['accel']}"
    met = f"<= {r['target']} {'MET' if r['met'] else 'MISSED'}"
    name, guest = ("B7D", "Debian 12 guest") if r.get("guest_os") == "debian" else ("B7", "real guest")
    return [
        (f"{name} enqueue→SSH banner, {guest} ({kind})", f"{r['ours_median_s']:.3f} s",
         f"{r['raw_median_s']:.3f} s overlay+define+create→banner", f"{r['ratio']:.3f}", met),
        (f"{name} same, with SSH post-load ({kind})", f"{r['ours_with_post_load_median_s']:.3f} s",
         f"{r['raw_median_s']:.3f} s", f"{r['ratio_with_post_load']:.3f}", "-"),
    ]  # fmt: skip


def tcg_note(r: dict[str, Any]) -> str:
    if r["accel"] == "TCG":
        return (f"B7: these numbers are TCG (QEMU software emulation, domain type qemu), not KVM: "
                f"{r['domain_type_reason']}")  # fmt: skip
    return f"B7: domain type kvm (hardware virtualization): {r['domain_type_reason']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.b7_guest_ready", description=__doc__)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--guest", choices=("tiny", "debian"), default="tiny")
    args = p.parse_args(argv)
    result = run(args.repeat, args.guest)
    name = "b7d.json" if args.guest == "debian" else "b7.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    for row in rows(result):
        print(" | ".join(row))
    print(tcg_note(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
