"""Is the guest really up? A TCP connect to (address, port) and, for SSH, an ``SSH-2.0-`` banner.

A domain libvirt calls ``running`` may still be in the BIOS, or may have panicked (too little memory
does exactly that); only an answer from the guest's own network stack counts. Each try has a short
timeout so a dead guest costs no more than the overall deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.hypervisors.errors import PermanentError

SSH_PORT = 22
SSH_PREFIX = b"SSH-2.0-"


class GuestNotReadyError(PermanentError):
    """The guest did not answer before the deadline; the message says what was last seen."""

    def __init__(self, address: str, port: int, waited: float, last_seen: str) -> None:
        self.address = address
        self.port = port
        self.waited = waited
        self.last_seen = last_seen
        super().__init__(f"{address}:{port} did not answer within {waited:.1f} s (last seen: {last_seen})")


@dataclass(frozen=True)
class Ready:
    seconds: float  # from the start of the wait to the answer
    banner: str  # the SSH identification line; "" for a plain TCP port
    attempts: int


def _try_once(address: str, port: int, timeout: float, *, want_banner: bool) -> tuple[bool, str]:
    """(ready, what was seen)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            if not want_banner:
                return True, "connected"
            sock.settimeout(timeout)
            data = b""
            # The identification line ends with CRLF; servers may send other lines first (RFC 4253).
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            line = data.split(b"\n", 1)[0].strip()
            if line.startswith(SSH_PREFIX):
                return True, line.decode("ascii", "replace")
            if not data:
                return False, "connection closed before a banner"
            return False, f"wrong banner {line[:60]!r}"
    except ConnectionRefusedError:
        return False, "connection refused"
    except TimeoutError:
        return False, "timeout"
    except OSError as exc:  # unreachable host/network while the address is not up yet
        return False, exc.strerror or type(exc).__name__


def wait_for_port(
    address: str,
    port: int = SSH_PORT,
    *,
    deadline: float = 120.0,
    try_timeout: float = 2.0,
    interval: float = 0.25,
    expect_ssh: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Ready:
    """Wait up to ``deadline`` seconds for ``address:port`` to answer (with an SSH banner on port 22).

    Raises :class:`GuestNotReadyError` naming the address, port and last thing seen.
    """
    want_banner = port == SSH_PORT if expect_ssh is None else expect_ssh
    start = clock()
    attempts = 0
    last_seen = "nothing (no attempt made)"
    while True:
        remaining = deadline - (clock() - start)
        if remaining <= 0:
            raise GuestNotReadyError(address, port, clock() - start, last_seen)
        attempts += 1
        ok, last_seen = _try_once(
            address, port, min(try_timeout, max(remaining, 0.05)), want_banner=want_banner
        )
        if ok:
            banner = last_seen if want_banner else ""
            return Ready(seconds=clock() - start, banner=banner, attempts=attempts)
        remaining = deadline - (clock() - start)
        if remaining > 0:
            sleep(min(interval, remaining))


def wait_for_ssh(address: str, *, deadline: float = 120.0, try_timeout: float = 2.0) -> Ready:
    return wait_for_port(address, SSH_PORT, deadline=deadline, try_timeout=try_timeout, expect_ssh=True)
