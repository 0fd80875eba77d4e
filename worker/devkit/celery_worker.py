"""A real ``celery -A worker.app worker`` subprocess (prefork), as a VM host runs it."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.app import make_app
from worker.config import Settings
from worker.devkit.commands import REPO_ROOT, venv_command


@dataclass
class CeleryWorker:
    proc: subprocess.Popen[bytes]
    name: str
    concurrency: int
    log: Path

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), killed after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def start_celery_worker(
    env: Mapping[str, str],
    queues: Sequence[str],
    log_dir: Path,
    *,
    host: str = "test",
    prefix: str = "w",
    concurrency: int = 2,
    loglevel: str = "INFO",
    extra_args: Sequence[str] = (),
    timeout: float = 90,
    launcher: Sequence[str] = (),
) -> CeleryWorker:
    """Start a prefork worker consuming ``queues`` and wait until it answers a ping; ``launcher``
    prefixes the command (e.g. ``nsenter`` into a second VM host's namespaces)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}@{host}"
    log = log_dir / f"{name.replace('@', '_')}.log"
    proc = subprocess.Popen(
        [*launcher, venv_command("celery"), "-A", "worker.app", "worker", "-Q", ",".join(queues), "-n", name,
         "--pool", "prefork", "-c", str(concurrency), "-E", "-l", loglevel, *extra_args],
        env=dict(env), stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )  # fmt: skip
    # Ping through an app of the worker's own settings, whatever the caller's app is configured for.
    control = make_app(Settings.from_env(env)).control
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{log.read_text()[-3000:]}")
        if control.ping(destination=[name], timeout=1.0):
            return CeleryWorker(proc, name, concurrency, log)
    proc.kill()
    raise RuntimeError(f"celery worker did not answer ping:\n{log.read_text()[-3000:]}")
