"""Named crash points for fault-injection tests (off unless ``VCL_FAILPOINT`` is set).

``VCL_FAILPOINT=<name>`` makes the process that reaches ``failpoint("<name>")`` kill itself with
SIGKILL, exactly once per ``VCL_FAILPOINT_MARKER`` file (so the redelivered task runs through).
With ``VCL_FAILPOINT_ACTION=hang`` the process instead blocks Celery's soft-time-limit signal
(SIGUSR1) and sleeps, so only the hard time limit can end it (the fault suite's hard-limit test).
This is how the fault suite proves that a worker child dying at any step of a load leaves nothing
lost or duplicated. With ``VCL_FAILPOINT_ACTION=pause`` (and a marker) it writes its pid into the
marker and waits until the file ``<marker>.go`` exists (at most ``VCL_FAILPOINT_PAUSE`` s, default
300), then carries on: a test acts while the task stands at that point (the fault suite cancels a
load there), then lets it go on or kills it. With the variable unset (production), a failpoint is
one dict lookup.
"""

from __future__ import annotations

import os
import signal
import time


def failpoint(name: str) -> None:
    if os.environ.get("VCL_FAILPOINT") != name:
        return
    marker = os.environ.get("VCL_FAILPOINT_MARKER")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return  # already fired once: let the redelivered task run through
        os.close(fd)
        if os.environ.get("VCL_FAILPOINT_ACTION") == "pause":
            _pause(marker)
            return
    if os.environ.get("VCL_FAILPOINT_ACTION") == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(marker: str) -> None:
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + float(os.environ.get("VCL_FAILPOINT_PAUSE", "300"))
    while not os.path.exists(marker + ".go") and time.monotonic() < deadline:
        time.sleep(0.05)
