"""Where the project and its virtualenv are, and how the kit runs their commands."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The running interpreter's bin directory: the venv's `celery` and `vcl-worker` whatever the caller's PATH.
VENV_BIN = Path(sys.executable).parent


def venv_command(name: str) -> str:
    """The absolute path of a console script installed in the running virtualenv."""
    return str(VENV_BIN / name)


def run_quiet(cmd: Sequence[str]) -> None:
    """Run ``cmd``, raising with its stderr when it fails (stdout discarded)."""
    subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_vcl_worker(
    env: Mapping[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``vcl-worker <args>`` against the stack described by ``env``; never raises on a non-zero exit."""
    return subprocess.run(
        [venv_command("vcl-worker"), *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
