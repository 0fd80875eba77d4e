"""What every benchmark uses: medians and ratios, repeats that survive a libvirtd restart, the raw
baseline loader, the timed worker load and the RSS sampler."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import psutil

from bench.stack import BenchStack
from worker.config import Settings
from worker.devkit.commands import run_quiet
from worker.devkit.libvirt_env import cleanup_domains, connect
from worker.hypervisors import domain_xml

TASK_TIMEOUT = 600
# Repeats thrown away and re-run, with their error (listed in the JSON).
DISCARDED: list[str] = []


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def sync() -> None:
    """Flush dirty pages so no measurement pays for the previous one's writeback."""
    os.sync()


def default_concurrency() -> int:
    return Settings().worker_concurrency


def retrying(fn: Callable[[], Any], cleanup: Callable[[], Any], *lists: list[Any], attempts: int = 4) -> Any:
    """Run one repeat; if it fails (other suites on this shared host restart libvirtd), drop what it
    measured, clean up and run it again. Discarded repeats are listed in the JSON."""
    marks = [len(x) for x in lists]
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            DISCARDED.append(f"{type(exc).__name__}: {exc}"[:300])
            print(f"  repeat discarded ({type(exc).__name__}: {str(exc)[:120]}); retrying", flush=True)
            for x, mk in zip(lists, marks, strict=True):
                del x[mk:]
            time.sleep(3)
            connect(wait=120).close()
            with contextlib.suppress(Exception):
                cleanup()
    return None


def timed_cmd(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    run_quiet(cmd)
    return time.perf_counter() - t0


def timeit(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class RawLoader:
    """The raw limit of a load: qemu-img overlay + defineXML + create, one process, one connection."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.conn = connect(stack.settings.libvirt_uri, wait=120)
        self.kind = "kvm" if os.path.exists("/dev/kvm") else "qemu"
        self.n = 0

    def _alive(self) -> None:
        """Reopen the connection if libvirtd was restarted under us."""
        try:
            self.conn.getLibVersion()  # a real round trip: isAlive() stays True on a broken pipe
        except libvirt.libvirtError:
            self.conn = connect(self.stack.settings.libvirt_uri, wait=120)

    def load(self, backing: Path | None = None) -> float:
        s = self.stack
        self._alive()
        self.n += 1
        name = f"{s.raw_prefix}{self.n}"
        cow = s.datastore / f"{name}.qcow2"
        # The same hardware as the worker's domain: one NIC per vmprofile switch (two here).
        nics = tuple(
            domain_xml.NicSpec(
                "network", s.network, "52:54:01:" + ":".join(f"{b:02x}" for b in os.urandom(3))
            )
            for _ in range(2)
        )
        xml = domain_xml.build_domain_xml(
            domain_xml.DomainSpec(
                name=name, uuid=str(uuid.uuid4()), domain_type=self.kind, memory_mib=512, vcpus=1,
                disk_path=str(cow), nics=nics,
            )
        )  # fmt: skip
        t0 = time.perf_counter()
        run_quiet(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing or s.master),
                   str(cow)])  # fmt: skip
        dom = self.conn.defineXML(xml)
        dom.create()
        return time.perf_counter() - t0

    def cleanup(self) -> None:
        cleanup_domains(self.stack.raw_prefix, self.stack.settings.libvirt_uri, wait=120)
        for p in self.stack.datastore.glob(f"{self.stack.raw_prefix}*"):
            p.unlink()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
        with contextlib.suppress(Exception):
            self.conn.close()


def worker_load(stack: BenchStack, index: int) -> tuple[float, dict[str, Any]]:
    """Enqueue ``vcl.load`` for a fresh reservation on computer ``index``; seconds until SUCCESS."""
    res = stack.new_reservation(index)
    t0 = time.perf_counter()
    value = stack.send("vcl.load", res).get(timeout=TASK_TIMEOUT)
    dt = time.perf_counter() - t0
    assert value["request_state"] == "reserved", value
    return dt, value


class RssSampler:
    """Peak RSS of each child of the Celery main process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.main = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        for child in self.main.children(recursive=False):
            with contextlib.suppress(psutil.Error):
                rss = child.memory_info().rss
                self.peak[child.pid] = max(self.peak.get(child.pid, 0), rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
