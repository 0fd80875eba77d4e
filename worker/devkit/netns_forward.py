"""TCP ports of this machine's loopback, offered on another network namespace's loopback.

A second VM host (:mod:`worker.devkit.second_host`) runs in its own network namespace, so its guest
networks are invisible to the first host; its worker still needs MariaDB and Redis, which listen on
127.0.0.1 only. This process binds ``127.0.0.1:<port>`` *inside* the namespace of ``--pid`` (a
socket keeps the namespace it was created in), returns to its own namespace and relays every
connection to ``127.0.0.1:<port>`` here. The worker's URLs stay exactly those of the first host's.

``python -m worker.devkit.netns_forward --pid <pid> --port 3306 --port 6379``; prints ``ready`` once
listening. Linux only (``setns(2)`` through libc: Python 3.11 has no ``os.setns``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in_namespace(pid: int, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on ``127.0.0.1:<port>`` in the network namespace of ``pid``."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            socks = []
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((LOOPBACK, port))
                s.listen(128)
                s.setblocking(False)
                socks.append(s)
            return socks
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _handler(port: int) -> object:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return relay


async def _serve(socks: list[socket.socket], ports: list[int]) -> None:
    servers = [
        await asyncio.start_server(_handler(port), sock=sock)  # type: ignore[arg-type]
        for sock, port in zip(socks, ports, strict=True)
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pid", type=int, required=True, help="a process in the target namespace")
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    socks = listen_in_namespace(args.pid, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(socks, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
