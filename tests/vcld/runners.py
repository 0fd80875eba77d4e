"""Apache VCL's real web front end and vcld as clients of the bridge, driven from the tests.

The shared runners (../shared/vcl/{web,vcld}) are one-shot scripts, so they are used for what they
do once: ``run-vcl-web.sh`` (``VCL_SCENARIO=add VCL_KEEP_SERVER=1``) installs PHP, unpacks VCL's web
code, creates and seeds the database and leaves ``php -S`` serving it; ``run-vcld.sh`` (a probe run,
cached) installs vcld's Perl packages, unpacks ``managementnode/`` and writes its stand-ins and the
probe OS module. This module then starts that unpacked, unchanged vcld in the foreground against the
web's database with the bridge module on its @INC. No VCL code is copied into the project.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.devkit.commands import REPO_ROOT
from worker.devkit.database import mariadb

SHARED_VCL = Path(os.environ.get("VCL_SHARED_DIR", str(REPO_ROOT.parent / "shared" / "vcl")))
WEB_RUNNER = SHARED_VCL / "web" / "run-vcl-web.sh"
VCLD_RUNNER = SHARED_VCL / "vcld" / "run-vcld.sh"
BRIDGE_LIB = REPO_ROOT / "integrations" / "vcld" / "lib"
REGISTER_SQL = REPO_ROOT / "integrations" / "vcld" / "sql" / "register.sql"
USER, VCLSYSTEM, PASSWORD = "vclprobe", "vclsystem", "probe-pass"


def runners_present() -> bool:
    return WEB_RUNNER.is_file() and VCLD_RUNNER.is_file()


def prepare_vcld(prep: Path) -> Path:
    """One probe run of ``run-vcld.sh`` into ``prep`` (skipped when already there); returns ``prep``."""
    if all((prep / p).exists() for p in ("managementnode/bin/vcld", "perl-shim", "lib-probe")):
        return prep
    db = f"vclbridgeprep_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "VCLD_WORK": str(prep), "VCLD_DB": db, "VCLD_OS": "probe", "VCLD_WAIT": "60"}
    log = prep.parent / "vcld-prep.log"
    prep.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("wb") as out:
            subprocess.run(["bash", str(VCLD_RUNNER)], env=env, stdout=out, stderr=subprocess.STDOUT,
                           check=True, timeout=1800)  # fmt: skip
    finally:
        mariadb("-e", f"DROP DATABASE IF EXISTS `{db}`")
    return prep


def sql(db: str, statements: str) -> None:
    proc = subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", db], input=statements.encode(),
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"SQL on {db} failed: {proc.stderr.decode(errors='replace')}")


@dataclass
class VclWeb:
    """VCL's PHP front end under ``php -S`` (left running by the runner) and its XML-RPC API."""

    db: str
    port: int
    workdir: Path
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.php?mode=xmlrpccall"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.php"

    def start(self) -> None:
        env = {**os.environ, "VCL_DB": self.db, "VCL_WEB_PORT": str(self.port), "VCL_SCENARIO": "add",
               "VCL_KEEP_SERVER": "1", "VCL_WORKDIR": str(self.workdir)}  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["bash", str(WEB_RUNNER)], env=env, capture_output=True, text=True,
                              timeout=1800, check=False)  # fmt: skip
        (self.workdir / "runner.log").write_text(proc.stdout + proc.stderr)
        found = re.search(r"php -S left running: PID (\d+)", proc.stdout)
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"run-vcl-web.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}"
            )
        self.pid = int(found.group(1))

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.pid = 0

    def rpc(self, method: str, *args: Any, user: str = USER) -> Any:
        proxy = xmlrpc.client.ServerProxy(
            self.url, headers=[("X-User", user), ("X-Pass", PASSWORD), ("X-APIVERSION", "2")], allow_none=True
        )
        return getattr(proxy, method)(*args)

    def ui_capture(self, request_id: int) -> str:
        """ "End Reservation & Create Image" through VCL's browser endpoints (the runner's helper)."""
        helper = WEB_RUNNER.parent / "helpers" / "vclwebui.py"
        proc = subprocess.run(["python3", str(helper), self.base, USER, PASSWORD, "capture", str(request_id)],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"vclwebui.py capture failed: {proc.stdout}{proc.stderr}")
        return proc.stdout


def _descendants(pid: int) -> list[int]:
    """All descendants (vcld's state processes call setpgrp, so a process-group kill misses them)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return [k for kid in kids for k in (kid, *_descendants(kid))]


@dataclass
class Vcld:
    """The unpacked, unchanged vcld in the foreground (``--nodaemon --verbose``)."""

    prep: Path
    workdir: Path
    db: str
    fqdn: str
    web_port: int
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "vcld.log"

    def config(self) -> Path:
        conf = self.workdir / "vcld.conf"
        conf.write_text(
            f"FQDN={self.fqdn}\nprocessname=vcld\nlog={self.log}\npidfile={self.workdir}/vcld.pid\n"
            f"database={self.db}\nserver=127.0.0.1\nLockerWrtUser=root\nwrtPass=\n"
            f"xmlrpc_username={VCLSYSTEM}@Local\nxmlrpc_pass={PASSWORD}\n"
            f"xmlrpc_url=http://127.0.0.1:{self.web_port}/index.php?mode=xmlrpccall\n"
            "enable_mysql_ssl=no\nRETURNPATH=\njabber=no\nWINDOWS_ROOT_PASSWORD=cl0udy\n"
        )
        return conf

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        conf = self.config()
        perl5lib = ":".join(str(p) for p in (BRIDGE_LIB, self.prep / "lib-probe", self.prep / "perl-shim"))
        env = {**self.env, "PERL5LIB": perl5lib, "TMPDIR": str(self.workdir / "tmp"),
               "VCLD_PROBE_TRACE": str(self.workdir / "probe-calls.log")}  # fmt: skip
        self.proc = subprocess.Popen(
            ["perl", "bin/vcld", f"--config={conf}", "--nodaemon", "--verbose"],
            cwd=self.prep / "managementnode", env=env,
            stdout=(self.workdir / "vcld.stdout").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = [*_descendants(self.proc.pid), self.proc.pid]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.25)
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
