"""What the two-host tests share: the dispatcher's poll, a task's success, SSH answered on a host."""

from __future__ import annotations

import socket
import sys
from typing import Any

import redis

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.second_host import SecondHost
from worker.devkit.stack import Stack
from worker.dispatcher import dispatch_once

TASK_TIMEOUT = 400
LOAD_STAGES = ["startload", "transfervm", "vmsetupconfig", "startvm", "machinebooted", "loadimagecomplete"]
BANNER = (
    "import socket,sys; s=socket.create_connection((sys.argv[1], 22), timeout=5); "
    "print(s.recv(64).decode(errors='replace'))"
)


def dispatch_one(stack: Stack, task_name: str) -> tuple[int, str, str]:
    """One dispatcher poll enqueuing exactly one task: (request id, task id, queue)."""
    kv = redis.Redis.from_url(stack.settings.lock_redis_url)
    done = dispatch_once(
        stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=kv
    )
    enqueued = [d for d in done if d.action == "enqueued"]
    assert len(enqueued) == 1, done
    assert enqueued[0].task_name == task_name, enqueued[0]
    return enqueued[0].request_id, str(enqueued[0].task_id), str(enqueued[0].queue)


def wait_success(stack: Stack, task_id: str, worker: CeleryWorker) -> dict[str, Any]:
    return stack.wait_success(task_id, worker, timeout=TASK_TIMEOUT)


def banner_on(host: SecondHost, address: str) -> str:
    """The SSH banner at ``address`` as seen from inside ``host``'s network namespace ('' if none)."""
    proc = host.run([sys.executable, "-c", BANNER, address], timeout=30)
    return proc.stdout.strip()


def banner_here(address: str) -> str:
    """The SSH banner at ``address`` from this (the first host's) network namespace ('' if none).

    Not merely "connect fails": this machine's uplink may accept any TCP connection and stay silent."""
    try:
        with socket.create_connection((address, 22), timeout=3) as s:
            s.settimeout(3)
            return s.recv(64).decode(errors="replace")
    except OSError:
        return ""


def dispatch_all(stack: Stack) -> dict[str, tuple[str, str]]:
    """One dispatcher poll: {queue: (task name, task id)} of what it enqueued (one per queue)."""
    kv = redis.Redis.from_url(stack.settings.lock_redis_url)
    done = dispatch_once(
        stack.store, stack.app, stack.site.management_node_id, settings=stack.settings, kv=kv
    )
    enqueued = [d for d in done if d.action == "enqueued"]
    by_queue = {str(d.queue): (str(d.task_name), str(d.task_id)) for d in enqueued}
    assert len(by_queue) == len(enqueued), done
    return by_queue


def ssh_on(host: SecondHost, key: str, address: str, command: str) -> str:
    """``command``'s output in the guest at ``address``, run with ``ssh`` from inside ``host``."""
    proc = host.run(
        ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{address}", command],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
