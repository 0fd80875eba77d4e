"""Post-load over SSH: the part of VCL's Linux ``post_load`` a provisioning worker owns.

After the guest answers, vcld's OS module logs in as root with the management node's identities
(``managementnode.keys``), sets the hostname, records the loaded image in ``~/currentimage.txt`` and
appends ``vcld_post_load=success``; ``node_status`` later reads that file back to decide READY /
POST_LOAD / RELOAD. This module does the same with paramiko (no shell on this side; each remote
command is an argument list quoted with ``shlex.join``).

Host keys: vcld runs ssh with ``StrictHostKeyChecking=no``. Here every connection the core makes
carries a :class:`~worker.hypervisors.host_keys.HostKeyPin`: a cold boot's connections pin the
guest's key, every other one (a restored snapshot's post-load, the node-status probe) must present
it, else :class:`~worker.hypervisors.errors.HostKeyMismatchError` (permanent, never retried). A login
without a pin (``host_keys=None``) accepts any key: test tooling only, never the core.
"""

from __future__ import annotations

import importlib
import logging
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import paramiko

from worker.hypervisors.errors import KeyFileError, PermanentError, TransientError
from worker.hypervisors.host_keys import HostKeyPin, PinPolicy
from worker.reservation import Reservation
from worker.timing import Stopwatch

log = logging.getLogger(__name__)

CURRENTIMAGE_PATH = "/root/currentimage.txt"
POST_LOAD_MARK = "vcld_post_load"
TAINTED_MARK = "vcld_tainted"

PostLoadStep = Callable[[Reservation, str], None]
# Commands run on an open session before post-load's own (a restore sets the guest's clock so).
SessionStep = Callable[["GuestShell"], None]


class PostLoadError(PermanentError):
    """The guest answered but the post-load step failed (VCL: post_load failed → load failed)."""


class GuestUnreachableError(TransientError):
    """SSH to the guest failed (refused, timed out, authentication)."""


@dataclass(frozen=True, slots=True)
class GuestLogin:
    address: str
    key_files: tuple[str, ...]
    port: int = 22
    user: str = "root"
    connect_timeout: float = 10.0
    # None accepts any host key: test tooling only (the core always passes its pin).
    host_keys: HostKeyPin | None = None


class GuestShell:
    """One SSH session to a guest; ``run`` takes an argument list, never a command string."""

    def __init__(self, login: GuestLogin) -> None:
        self.login = login
        self._client = paramiko.SSHClient()
        # No known_hosts is loaded: every key is "missing", so the pin's policy sees each connection.
        policy: paramiko.MissingHostKeyPolicy = (
            paramiko.AutoAddPolicy() if login.host_keys is None else PinPolicy(login.host_keys, login.address)
        )
        self._client.set_missing_host_key_policy(policy)

    def __enter__(self) -> GuestShell:
        target = f"ssh {self.login.user}@{self.login.address}:{self.login.port}"
        try:
            sock = socket.create_connection(
                (self.login.address, self.login.port), timeout=self.login.connect_timeout
            )
        except OSError as exc:
            raise GuestUnreachableError(f"{target}: {type(exc).__name__}: {exc}") from exc
        # Every command is a few small SSH packets (exec request, stdin, EOF): with Nagle's algorithm
        # each waits for the guest's delayed ACK, ~40 ms a command (measured: 57 ms -> 15 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._client.connect(
                self.login.address,
                port=self.login.port,
                username=self.login.user,
                # paramiko documents a list of key files here; its stubs only say str.
                key_filename=list(self.login.key_files),  # type: ignore[arg-type]
                look_for_keys=False,
                allow_agent=False,
                timeout=self.login.connect_timeout,
                banner_timeout=self.login.connect_timeout,
                auth_timeout=self.login.connect_timeout,
                sock=sock,
            )
        except BaseException as exc:
            self._client.close()
            sock.close()
            if isinstance(exc, paramiko.SSHException | OSError):
                raise GuestUnreachableError(f"{target}: {type(exc).__name__}: {exc}") from exc
            raise  # a host key mismatch among others: never retried as unreachable
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``argv`` in the guest; returns (exit status, stdout+stderr)."""
        try:
            chan_in, chan_out, _ = self._client.exec_command(shlex.join(argv), timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            chan_out.channel.set_combine_stderr(True)
            output = chan_out.read().decode(errors="replace")
            return chan_out.channel.recv_exit_status(), output
        except (paramiko.SSHException, OSError) as exc:
            raise GuestUnreachableError(f"ssh {self.login.address}: {shlex.join(argv)}: {exc}") from exc

    def check(self, argv: Sequence[str], stdin: str | None = None) -> str:
        status, output = self.run(argv, stdin)
        if status != 0:
            raise PostLoadError(f"{shlex.join(argv)} exited {status} in the guest: {output.strip()[:200]}")
        return output


def currentimage_text(r: Reservation, loaded_at: datetime) -> str:
    """``~/currentimage.txt`` as vcld writes it (OS.pm), with the post-load status line appended."""
    lines = [
        r.imagerevision_imagename,
        f"id={r.image_id}",
        f"prettyname={r.image_prettyname}",
        f"imagerevision_id={r.imagerevision_id}",
        f"computer_id={r.computer_id}",
        f"computer_hostname={r.computer_short_name}",
        f"{POST_LOAD_MARK}=success ({loaded_at.strftime('%Y-%m-%d %H:%M:%S')})",
    ]
    return "\n".join(lines) + "\n"


def parse_currentimage(text: str) -> dict[str, str]:
    """The ``key=value`` lines of currentimage.txt (the first line, the image name, under ``name``)."""
    lines = text.splitlines()
    parsed = {"name": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep:
            parsed[key.strip()] = value.strip()
    return parsed


def login_for(
    r: Reservation, address: str, port: int = 22, *, host_keys: HostKeyPin | None
) -> GuestLogin | None:
    """How to log into the guest, or None when the management node has no SSH identity."""
    if not r.management_node_keys:
        return None
    return GuestLogin(address=address, key_files=r.management_node_keys, port=port, host_keys=host_keys)


def check_key_files(r: Reservation) -> None:
    """Every ``managementnode.keys`` file is a private key this worker can read, or
    :class:`KeyFileError` naming the row: a configuration error fails the load at once instead of
    every login failing until the readiness deadline."""
    row = f"managementnode.keys of management node {r.management_node_short_name} (id {r.management_node_id})"
    for path in r.management_node_keys:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            paramiko.PKey.from_path(path)
        except FileNotFoundError as exc:
            raise KeyFileError(f"{row}: {path} does not exist") from exc
        except OSError as exc:
            raise KeyFileError(f"{row}: {path} cannot be read: {exc.strerror or exc}") from exc
        except (paramiko.SSHException, ValueError) as exc:
            raise KeyFileError(f"{row}: {path} is not a private key without passphrase: {exc}") from exc


def check_host_key(address: str, port: int, pin: HostKeyPin, timeout: float = 10.0) -> None:
    """The host key check alone (an SSH handshake, no login): for guests post-load does not log into."""
    target = f"ssh {address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise GuestUnreachableError(f"{target}: {type(exc).__name__}: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise GuestUnreachableError(f"{target}: {type(exc).__name__}: {exc}") from exc
    finally:
        transport.close()
        sock.close()
    pin.apply(address, key)


# $1: the hostname, $2: currentimage.txt's path (its content on stdin).
_POST_LOAD_SCRIPT = 'hostname "$1" && printf "%s\\n" "$1" > /etc/hostname && cat > "$2"'


def ssh_post_load(
    r: Reservation, address: str, first: SessionStep | None = None, *, host_keys: HostKeyPin | None = None
) -> None:
    """Default post-load: hostname = the computer's short name, currentimage.txt recorded.

    ``first`` runs on the same SSH session before that (one login instead of two). The core passes
    ``host_keys``; a site's hook calling this with its two arguments logs in unverified, after the
    core's own check of the key (see :func:`~worker.hypervisors.guest_access.run_post_load`)."""
    login = login_for(r, address, host_keys=host_keys)
    if login is None:
        log.info("%s: management node has no SSH keys; post-load skipped", r.computer_short_name)
        return
    watch = Stopwatch()
    with GuestShell(login) as shell:
        if first is not None:
            first(shell)
        # One command, not three: every exec is a process started by the guest's sshd (a PAM
        # session on a distribution), ~0.3 s each under TCG. Values go in as arguments, not code.
        shell.check(
            ["sh", "-c", _POST_LOAD_SCRIPT, "post-load", r.computer_short_name, CURRENTIMAGE_PATH],
            stdin=currentimage_text(r, datetime.now(UTC)),
        )
    log.info("%s: post-load done in %.1f s", r.computer_short_name, watch.elapsed())


def in_session(r: Reservation, address: str, step: SessionStep, *, host_keys: HostKeyPin | None) -> bool:
    """Run ``step`` on its own SSH session; False (nothing run) when there is no identity to log in."""
    login = login_for(r, address, host_keys=host_keys)
    if login is None:
        return False
    with GuestShell(login) as shell:
        step(shell)
    return True


def read_currentimage(r: Reservation, address: str, *, host_keys: HostKeyPin | None) -> dict[str, str] | None:
    """currentimage.txt read back from the guest; None when there are no keys or no such file."""
    login = login_for(r, address, host_keys=host_keys)
    if login is None:
        return None
    with GuestShell(login) as shell:
        status, output = shell.run(["cat", CURRENTIMAGE_PATH])
    return parse_currentimage(output) if status == 0 else None


def timing_name(setting: str) -> str:
    """A load's timing of the step after the guest answered: ``post_load``, or ``host_key`` where
    ``VCL_POST_LOAD`` is ``none`` (delegated mode: vcld's OS module post-loads) and the step is only
    the host key's handshake (and a restored guest's clock)."""
    return "host_key" if setting == "none" else "post_load"


def resolve_post_load(setting: str) -> PostLoadStep | None:
    """The post-load step named by ``VCL_POST_LOAD``: ``ssh`` (default), ``none`` or ``module:function``."""
    if setting == "none":
        return None
    if setting == "ssh":
        return ssh_post_load
    module_name, _, attr = setting.partition(":")
    try:
        step = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PostLoadError(f"VCL_POST_LOAD={setting!r} cannot be loaded: {exc}") from exc
    if not callable(step):
        raise PostLoadError(f"VCL_POST_LOAD={setting!r} is not callable")
    return step  # type: ignore[no-any-return]
