"""Child processes that die with the worker: the parent-death signal of a helper (qemu-img).

Linux sends a process its parent-death signal when the thread that forked it exits, however it ends
(``kill -9``, Celery's hard time limit, an out-of-memory kill). SIGKILL there means a helper never
outlives the task that started it. The signal is armed by util-linux ``setpriv --pdeathsig KILL``
(an argv prefix: no Python code runs in the forked child of a threaded worker) or, where setpriv is
missing, by ``prctl(PR_SET_PDEATHSIG)`` through ctypes in the child before exec, which then checks
that its parent did not die before the signal was armed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent_argv() -> tuple[list[str], Callable[[], None] | None]:
    """The argv prefix (``setpriv``) or, without it, the child hook that makes qemu-img get SIGKILL
    when the process (thread) that started it dies."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--"], None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    parent = os.getpid()

    def _set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return [], _set_pdeathsig


def chain_hooks(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    todo = [h for h in hooks if h is not None]
    if not todo:
        return None

    def _all() -> None:
        for hook in todo:
            hook()

    return _all


__all__ = ["chain_hooks", "die_with_parent_argv"]
