"""SSH host keys pinned per computer: the guest this worker booted, and no other, gets post-loaded.

vcld runs ssh with ``StrictHostKeyChecking=no``: whatever answers at the computer's address is
post-loaded and handed out. Here the key is **pinned** by the first connection after a cold boot
(the worker has just made the overlay from the master, started the domain and pinned its address
by DHCP; an image that makes its host keys on first boot, as the test guest does, has a new key on
every cold boot, so every cold boot re-pins) and **verified** by every other connection: the
post-load of a restored boot snapshot (the same running OS as the cold boot that pinned it), the
node-status probe. A key other than the pinned one raises :class:`HostKeyMismatchError`; a verify
with no pin at all does too (nothing is ever accepted unseen).

One JSON file per computer, ``<dir>/computer-<id>.json`` (mode 0600, written through ``.part`` created
``O_EXCL|O_NOFOLLOW`` + fsync + rename), in ``host-keys`` inside ``VCL_LOCK_DIR`` (the worker's state
directory). Nothing here opens a connection: :mod:`.postload` does, with :class:`PinPolicy`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import paramiko

from worker.config import Settings
from worker.hypervisors.errors import HostKeyMismatchError
from worker.reservation import Reservation

log = logging.getLogger(__name__)

DIR_NAME = "host-keys"


class HostKeyMode(StrEnum):
    PIN = "pin"  # a cold boot's connections: record the key the guest presents
    VERIFY = "verify"  # every other connection: the key must be the pinned one


def pin_directory(settings: Settings) -> str:
    """``host-keys`` inside ``VCL_LOCK_DIR`` (the worker's state directory)."""
    return os.path.join(settings.lock_dir, DIR_NAME)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, kw_only=True)
class HostKeyPin:
    """The host key rule of one computer's connections (``mode``: pin or verify)."""

    directory: str
    computer_id: int
    computer: str  # the short name, for messages
    imagerevision_id: int
    mode: HostKeyMode

    @classmethod
    def for_reservation(cls, settings: Settings, r: Reservation, mode: HostKeyMode) -> HostKeyPin:
        return cls(
            directory=pin_directory(settings),
            computer_id=r.computer_id,
            computer=r.computer_short_name,
            imagerevision_id=r.imagerevision_id,
            mode=mode,
        )

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"computer-{self.computer_id}.json")

    def pinned(self) -> dict[str, Any] | None:
        """The pin file's record; None when there is none (or it does not parse)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "key" in data else None

    def apply(self, address: str, key: paramiko.PKey) -> None:
        """Pin ``key`` (PIN) or check it against the pin (VERIFY: :class:`HostKeyMismatchError`)."""
        if self.mode is HostKeyMode.PIN:
            self._write(address, key)
            return
        record = self.pinned()
        seen = f"{key.get_name()} {fingerprint(key)}"
        if record is None:
            raise HostKeyMismatchError(
                f"{self.computer} ({address}) presented host key {seen} and no key is pinned for "
                f"computer {self.computer_id} in {self.directory}: refused"
            )
        if (record.get("key_type"), record.get("key")) != (key.get_name(), key.get_base64()):
            raise HostKeyMismatchError(
                f"{self.computer} ({address}) presented host key {seen}, not the key pinned at its "
                f"cold boot ({record.get('key_type')} {record.get('fingerprint')}, {self.path}): "
                "another machine answers at its address, or the guest is not the one booted; refused"
            )

    def _write(self, address: str, key: paramiko.PKey) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        record = {
            "computer_id": self.computer_id,
            "computer": self.computer,
            "imagerevision_id": self.imagerevision_id,
            "address": address,
            "key_type": key.get_name(),
            "key": key.get_base64(),
            "fingerprint": fingerprint(key),
            "pinned_at": time.time(),
        }
        previous = self.pinned()
        if previous is not None and previous.get("key") == record["key"]:
            return  # the same key (an image whose keys are in its master): nothing to write
        tmp = self.path + ".part"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.path)
        log.info(
            "%s: host key %s %s pinned after its cold boot (%s)",
            self.computer, record["key_type"], record["fingerprint"], self.path,
        )  # fmt: skip


class PinPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko's hook for a server key it does not know (the client loads none): the pin decides."""

    def __init__(self, pin: HostKeyPin, address: str) -> None:
        self.pin, self.address = pin, address

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.pin.apply(self.address, key)


__all__ = ["DIR_NAME", "HostKeyMode", "HostKeyPin", "PinPolicy", "fingerprint", "pin_directory"]
