"""Post-load's SSH session, with a stand-in shell (no guest is booted here; test_boot_snapshot's
real guest proves the clock set after a restore): a restore's clock set shares post-load's one login, a
session of its own (post-load not ``ssh``) is best effort, and the session's socket has Nagle off."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

import paramiko
import pytest

from worker.config import Settings
from worker.devkit.reservations import make_reservation
from worker.hypervisors import guest_access, postload
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin
from worker.hypervisors.postload import GuestLogin, GuestShell, GuestUnreachableError

ADDRESS = "192.0.2.10"  # TEST-NET: the stand-in shell never connects


class _FakeShell:
    """Stands in for GuestShell: records each session and the argv lists run on it."""

    sessions: list[list[list[str]]] = []
    refuse = False

    def __init__(self, login: GuestLogin) -> None:
        self.login = login

    def __enter__(self) -> _FakeShell:
        if _FakeShell.refuse:
            raise GuestUnreachableError(f"ssh {self.login.address}: refused")
        _FakeShell.sessions.append([])
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def check(self, argv: Sequence[str], stdin: str | None = None) -> str:
        _FakeShell.sessions[-1].append(list(argv))
        return ""


@pytest.fixture
def fake_shell(monkeypatch: pytest.MonkeyPatch) -> type[_FakeShell]:
    _FakeShell.sessions = []
    _FakeShell.refuse = False
    monkeypatch.setattr(postload, "GuestShell", _FakeShell)
    # The key-only handshake before a post-load that does not log in (tests/core/test_host_keys.py).
    monkeypatch.setattr(postload, "check_host_key", lambda *_a, **_k: None)
    return _FakeShell


def _set_clock(shell: Any) -> None:
    shell.check(["date", "-u", "-s", "@1"])


def _run(post_load: str) -> float:
    r = make_reservation(management_node_keys=("/nonexistent/key",))
    settings = Settings(post_load=post_load)
    pin = HostKeyPin.for_reservation(settings, r, HostKeyMode.VERIFY)
    answer = guest_access.GuestAnswer(ADDRESS, 22, "", 0.0)
    return guest_access._run_post_load(r, answer, settings, time.monotonic() + 5, (pin, _set_clock))


def test_first_step_runs_on_post_loads_one_session(fake_shell: type[_FakeShell]) -> None:
    _run("ssh")
    assert len(fake_shell.sessions) == 1
    assert [argv[0] for argv in fake_shell.sessions[0]] == ["date", "sh"]


def test_first_step_alone_when_post_load_does_not_log_in(fake_shell: type[_FakeShell]) -> None:
    _run("none")
    assert fake_shell.sessions == [[["date", "-u", "-s", "@1"]]]
    # Best effort there, as the clock set was before: an unreachable guest only warns.
    fake_shell.refuse = True
    _run("none")


def test_guest_shell_turns_nagle_off(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}

    def connect(self: paramiko.SSHClient, *_: Any, sock: socket.socket, **__: Any) -> None:
        seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        login = GuestLogin(address="127.0.0.1", key_files=(), port=srv.getsockname()[1], connect_timeout=2)
        with GuestShell(login):
            pass
    assert seen["nodelay"] != 0
