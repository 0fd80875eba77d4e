"""Private ``redis-server`` and ``mariadbd`` processes a fault test may crash on purpose, without
touching the services everyone else on the host uses."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``pred`` until it is true; exceptions count as not yet (the service may still be starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class PrivateRedis:
    """Configured as production must be: AOF with ``appendfsync everysec``, no RDB, ``noeviction``."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, 20, "redis-server")

    def ping(self) -> bool:
        return bool(redis.Redis(port=self.port, socket_timeout=1).ping())

    def crash(self) -> None:
        """SIGKILL (no clean shutdown, no final save): only what AOF already fsynced survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.proc, 15)


@dataclass
class PrivateMariaDB:
    """A ``mariadbd`` with its own data directory, READ COMMITTED like the worker's sessions."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def cnf(self) -> Path:
        return self.dir / "my.cnf"

    def install(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cnf.write_text(
            "[mariadbd]\nuser=root\n"
            f"datadir={self.dir / 'data'}\nport={self.port}\nbind-address=127.0.0.1\n"
            f"socket={self.dir / 'sock'}\npid-file={self.dir / 'pid'}\nlog-error={self.dir / 'err.log'}\n"
            "skip-log-bin\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=16M\n"
            "transaction-isolation=READ-COMMITTED\n"
        )
        subprocess.run(
            ["mariadb-install-db", f"--defaults-file={self.cnf}", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mariadbd", f"--defaults-file={self.cnf}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self.ping, 60, "mariadbd")

    def ping(self) -> bool:
        return (
            subprocess.run(
                ["mariadb-admin", "-uroot", "-h127.0.0.1", f"-P{self.port}", "ping"],
                capture_output=True, timeout=5, check=False,
            ).returncode == 0
        )  # fmt: skip

    def stop(self) -> None:
        _stop(self.proc, 60)
