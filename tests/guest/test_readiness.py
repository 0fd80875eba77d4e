"""readiness.wait_for_port against local sockets: refused, silent, wrong banner, right banner."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from worker.hypervisors.errors import PermanentError
from worker.hypervisors.readiness import GuestNotReadyError, wait_for_port

pytestmark = pytest.mark.guest


def _serve(greeting: bytes | None, delay: float = 0.0) -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if greeting is not None:
                time.sleep(delay)
                conn.sendall(greeting)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()
        for c in held:
            c.close()


@pytest.fixture
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens there now: connections are refused
    return port


def test_refused_times_out_with_typed_error(free_port: int) -> None:
    start = time.monotonic()
    with pytest.raises(GuestNotReadyError) as err:
        wait_for_port("127.0.0.1", free_port, deadline=1.0, expect_ssh=True)
    assert time.monotonic() - start < 2.5
    assert isinstance(err.value, PermanentError)
    msg = str(err.value)
    assert f"127.0.0.1:{free_port}" in msg and "refused" in msg


def test_silent_server_is_a_timeout() -> None:
    for port in _serve(None):
        with pytest.raises(GuestNotReadyError) as err:
            wait_for_port("127.0.0.1", port, deadline=1.5, try_timeout=0.5, expect_ssh=True)
        assert "timeout" in str(err.value)


def test_wrong_banner() -> None:
    for port in _serve(b"220 smtp ready\r\n"):
        with pytest.raises(GuestNotReadyError) as err:
            wait_for_port("127.0.0.1", port, deadline=1.0, try_timeout=0.5, expect_ssh=True)
        assert "wrong banner" in str(err.value) and "220 smtp" in str(err.value)


def test_ssh_banner_is_ready() -> None:
    for port in _serve(b"SSH-2.0-dropbear_2022.83\r\n", delay=0.1):
        ready = wait_for_port("127.0.0.1", port, deadline=5, expect_ssh=True)
        assert ready.banner == "SSH-2.0-dropbear_2022.83"
        assert ready.seconds < 2 and ready.attempts == 1


def test_plain_tcp_port_needs_no_banner() -> None:
    for port in _serve(None):
        ready = wait_for_port("127.0.0.1", port, deadline=2)
        assert ready.banner == ""


def test_becomes_ready_after_refusals(free_port: int) -> None:
    def listen_later() -> None:
        time.sleep(0.6)
        srv = socket.socket()
        srv.bind(("127.0.0.1", free_port))
        srv.listen(1)
        conn, _ = srv.accept()
        conn.sendall(b"SSH-2.0-late\r\n")
        time.sleep(0.2)
        conn.close()
        srv.close()

    threading.Thread(target=listen_later, daemon=True).start()
    ready = wait_for_port("127.0.0.1", free_port, deadline=5, interval=0.1, expect_ssh=True)
    assert ready.banner == "SSH-2.0-late" and ready.attempts > 1 and ready.seconds >= 0.5
