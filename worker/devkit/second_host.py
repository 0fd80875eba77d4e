"""A second, separate VM host on this machine: its own ``libvirtd`` + ``virtlogd`` (own sockets,
``/var/lib/libvirt``, domains, networks, dnsmasq, datastore) in their own mount and network
namespaces, for tests and benchmarks of a site with two hosts.

``unshare --mount --net --propagation private`` runs :data:`NAMESPACE_SCRIPT`: it bind-mounts this
host's own directories (under ``<root>`` = ``/var/lib/vcl-worker/hosts/<name>``) over
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``, ``/var/cache/libvirt`` and ``/etc/libvirt``
(a copy of the first host's, without its domain and network definitions), mounts the ``shared``
directories (a site's repository, an NFS-like datastore) at their own paths again, brings ``lo`` up
and starts the daemons under ``tini -s`` (a child subreaper reaps QEMU at once, as
``scripts/start-libvirtd.sh`` explains). The first host's ``/var/lib/libvirt/images`` is invisible
inside: a worker of this host cannot read the first host's datastore.

The daemons run as ``vcl-libvirtd``/``vcl-virtlogd`` (symlinks) with pid files under ``<root>``:
``pgrep -x libvirtd``, ``/run/libvirtd.pid`` and ``/run/virtlogd.pid`` keep naming the first host's
daemons only (the fault suite restarts libvirtd by them). Outside the namespaces the host is reached
through ``qemu+unix:///system?socket=<root>/run/libvirt-sock``. Its guests' bridges and dnsmasq live
in the host's network namespace; :mod:`worker.devkit.netns_forward` offers MariaDB and Redis on its
loopback, so its worker (run with :meth:`SecondHost.command`) uses the first host's URLs unchanged.

:meth:`SecondHost.stop` destroys its domains and networks, ends every process of its mount
namespace by pid (the namespace and its mounts go with the last one) and removes ``<root>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from worker.devkit.libvirt_env import connect

HOSTS_ROOT = Path("/var/lib/vcl-worker/hosts")
IMAGES_DIR = Path("/var/lib/libvirt/images")
# (directory under <root>, where the namespace sees it)
MOUNTS = (
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("etc", "/etc/libvirt"),
)
DAEMON_NAMES = {"libvirtd": "vcl-libvirtd", "virtlogd": "vcl-virtlogd"}
DEFAULT_FORWARD_PORTS = (3306, 6379)

# $1 = <root>; then pairs: stage directory, shared path. Values are arguments, never script text.
NAMESPACE_SCRIPT = r"""
set -eu
root="$1"; shift
staged=""
while [ "$#" -ge 2 ]; do
  mount --bind "$2" "$1"; staged="$staged $1 $2"; shift 2
done
for pair in run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt \
            etc:/etc/libvirt; do
  mount --bind "$root/${pair%%:*}" "${pair#*:}"
done
set -- $staged
while [ "$#" -ge 2 ]; do
  mkdir -p "$2"; mount --bind "$1" "$2"; umount "$1"; shift 2
done
ip link set lo up
exec tini -s -- sh -c \
  '"$1/bin/vcl-virtlogd" -d -p "$1/virtlogd.pid" && exec "$1/bin/vcl-libvirtd" -p "$1/libvirtd.pid"' \
  sh "$root"
"""


@dataclass
class SecondHost:
    """A running second VM host; paths are those its own processes see unless named ``*_on_host``."""

    name: str
    root: Path
    proc: subprocess.Popen[bytes]
    shared: tuple[Path, ...]
    mnt_ns: str
    forwarder: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    stopped: bool = field(default=False)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Its libvirt, from anywhere on this machine (inside its namespaces ``qemu:///system`` too)."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pid(self) -> int:
        """tini's pid: the process whose namespaces :meth:`command` enters."""
        return self.proc.pid

    @property
    def images(self) -> Path:
        """Its ``/var/lib/libvirt/images`` (under the allowed roots, as on any host)."""
        return IMAGES_DIR

    def on_host(self, path: Path | str) -> Path:
        """Where a path of this host lies for the first host's processes (shared paths are the same)."""
        p = Path(path)
        if any(p == s or p.is_relative_to(s) for s in self.shared):
            return p
        for sub, target in MOUNTS:
            if p == Path(target) or p.is_relative_to(target):
                return self.root / sub / p.relative_to(target)
        return p

    def make_datastore(self, name: str) -> Path:
        """A fresh directory under its images dir; its path as this host sees it."""
        path = self.images / name
        real = self.on_host(path)
        real.mkdir(parents=True, exist_ok=True)
        os.chmod(real, 0o755)  # noqa: S103 - read by libvirt-qemu, written only by root
        return path

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside this host's mount and network namespaces, in the caller's directory
        (entering a mount namespace would start it in ``/``)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", f"--wd={os.getcwd()}", "--", *cmd]

    def run(self, cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on this host (never raises on a non-zero exit)."""
        return subprocess.run(self.command(cmd), capture_output=True, text=True, timeout=timeout)

    def conn(self, wait: float = 30) -> libvirt.virConnect:
        return connect(self.uri, wait)

    def processes(self) -> list[int]:
        """Pids of every process in its mount namespace (its daemons, QEMU, dnsmasq, its workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "mnt") == self.mnt_ns:
                        pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Remove its domains and networks, end its processes, remove ``<root>``; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(libvirt.libvirtError):
            _remove_all(self.conn(wait=0))
        if self.forwarder is not None:
            _end(self.forwarder)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.processes():
            raise RuntimeError(f"second host {self.name}: processes left {self.processes()}")
        _remove_tree(self.root)


def _remove_all(conn: libvirt.virConnect) -> None:
    try:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
        for net in conn.listAllNetworks(0):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
    finally:
        conn.close()


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_tree(root: Path) -> None:
    if root.resolve().is_relative_to(HOSTS_ROOT) and root.resolve() != HOSTS_ROOT:
        for p in root.rglob("*"):
            with contextlib.suppress(OSError):
                if not p.is_symlink():
                    os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)


def _prepare_root(root: Path, shared: Sequence[Path]) -> list[str]:
    """``<root>`` with its directories, the ``/etc/libvirt`` copy and the daemon links; the script's
    stage/shared argument pairs."""
    for sub, _target in MOUNTS:
        if sub != "etc":
            (root / sub).mkdir(parents=True)
    for sub in ("lib/images", "lib/qemu", "lib/dnsmasq", "lib/boot", "cache/qemu", "bin", "stage"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for d in (root, root / "lib", root / "lib" / "images"):
        os.chmod(d, 0o755)  # noqa: S103 - read by libvirt-qemu, written only by root
    # The first host's domains, networks, autostart links and pools are its own.
    shutil.copytree(
        "/etc/libvirt", root / "etc", symlinks=True,
        ignore=lambda d, names: [n for n in names if n.endswith(".xml") and not d.endswith("nwfilter")]
        + [n for n in names if n == "storage"],
    )  # fmt: skip
    for real, link in DAEMON_NAMES.items():
        exe = shutil.which(real, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if exe is None:
            raise RuntimeError(f"{real} is not installed")
        (root / "bin" / link).symlink_to(exe)
    pairs: list[str] = []
    for i, path in enumerate(shared):
        if not path.is_dir():
            raise RuntimeError(f"shared directory {path} does not exist")
        stage = root / "stage" / str(i)
        stage.mkdir()
        pairs += [str(stage), str(path)]
    return pairs


def start_second_host(
    tag: str,
    shared: Sequence[Path] = (),
    forward_ports: Sequence[int] = DEFAULT_FORWARD_PORTS,
    timeout: float = 30,
) -> SecondHost:
    """Start a second host named ``<tag>-<id>``; ``shared`` directories are seen at the same paths
    by both hosts; ``forward_ports`` of 127.0.0.1 are reachable on its loopback."""
    start = time.monotonic()
    name = f"{tag}-{uuid.uuid4().hex[:6]}"
    root = HOSTS_ROOT / name
    HOSTS_ROOT.mkdir(parents=True, exist_ok=True)
    try:
        pairs = _prepare_root(root, tuple(shared))
    except BaseException:
        _remove_tree(root)
        raise
    log = (root / "daemons.log").open("ab")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", NAMESPACE_SCRIPT,
         "sh", str(root), *pairs],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    mnt_ns = ""
    host = SecondHost(name, root, proc, tuple(shared), mnt_ns)
    try:
        host.mnt_ns = _wait_namespace(proc)
        if forward_ports:
            host.forwarder = _start_forwarder(proc.pid, forward_ports)
        _wait_libvirt(host, timeout)
    except BaseException:
        if not host.mnt_ns:
            _end(proc)
            _remove_tree(root)
        else:
            host.stop()
        raise
    host.started_s = time.monotonic() - start
    return host


def _wait_namespace(proc: subprocess.Popen[bytes]) -> str:
    own = os.readlink("/proc/self/ns/mnt")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the second host's namespace script exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
            # tini (exec'd at the script's end) in a namespace of its own: the mounts are done.
            if ns != own and Path(f"/proc/{proc.pid}/comm").read_text().strip() == "tini":
                return ns
        time.sleep(0.05)
    raise RuntimeError("the second host's namespace did not come up in 10 s")


def _start_forwarder(pid: int, ports: Sequence[int]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "worker.devkit.netns_forward", "--pid", str(pid)]
    for port in ports:
        args += ["--port", str(port)]
    fwd = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert fwd.stdout is not None
    line = fwd.stdout.readline()
    if line.strip() != b"ready":
        _end(fwd)
        raise RuntimeError(f"netns forwarder did not start: {line!r}")
    return fwd


def _wait_libvirt(host: SecondHost, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if host.proc.poll() is not None:
            log = (host.root / "daemons.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"second host's libvirtd exited with {host.proc.returncode}: {log}")
        try:
            host.conn(wait=0).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def second_host(
    tag: str, shared: Sequence[Path] = (), forward_ports: Sequence[int] = DEFAULT_FORWARD_PORTS
) -> Iterator[SecondHost]:
    host = start_second_host(tag, shared, forward_ports)
    try:
        yield host
    finally:
        host.stop()
