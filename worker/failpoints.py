"""Named crash points for fault-injection tests (off unless ``VCL_FAILPOINT`` is set).

``VCL_FAILPOINT=<name>`` makes the process that reaches ``failpoint("<name>")`` kill itself with
SIGKILL, exactly once per ``VCL_FAILPOINT_MARKER`` file (so the redelivered task runs through).
This is how the fault suite proves that a worker child dying at any step of a load leaves nothing
lost or duplicated. With the variable unset (production), a failpoint is one dict lookup.
"""

from __future__ import annotations

import os
import signal


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
    os.kill(os.getpid(), signal.SIGKILL)
