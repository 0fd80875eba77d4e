"""A real-stack test whose service is missing: skipped on a developer's machine, failed in CI.

The real stack (MariaDB, Redis, libvirtd, qemu-img) is the proof; CI (``CI=true``) must fail
instead of turning the proof into skips.
"""

from __future__ import annotations

import os
from typing import NoReturn


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_service(what: str) -> NoReturn:
    import pytest  # only tests call this; the demo must not need pytest

    if in_ci():
        pytest.fail(f"{what} (CI runs the real stack: this is a failure, not a skip)")
    pytest.skip(what)
