"""The configured roots (``VCL_ALLOWED_ROOTS``, ``VCL_REPOSITORY_ROOT``) as text: parsed and checked.

Neutral on purpose: the settings (:mod:`worker.config`) validate the roots and the core
(:mod:`worker.hypervisors.roots`) checks paths against them, and neither may import the other's side.
This module imports nothing of the worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

DEFAULT_ROOTS = ("/var/lib/libvirt/images",)


def parse_roots(text: str) -> tuple[str, ...]:
    """``VCL_ALLOWED_ROOTS``: absolute directories separated by ``:`` (as PATH), empty parts ignored."""
    return tuple(part.strip() for part in text.split(":") if part.strip())


def root_problem(root: str) -> str | None:
    """What is wrong with a configured root (the text after ``setting NAME``), or ``None``."""
    if not root.startswith("/"):
        return f"must list absolute directories, got {root!r}"
    if any(part == ".." for part in root.split("/")):
        return f"must not contain '..', got {root!r}"
    if os.path.realpath(root) == "/":
        # "/" would allow every path on the host: the check would mean nothing.
        return f"must not allow the whole file system ({root!r} resolves to /)"
    return None


def check_root(root: str, what: str) -> str:
    """A configured root: absolute, not ``/`` itself, no ``..``. Returns it resolved."""
    problem = root_problem(root)
    if problem is not None:
        raise ValueError(f"setting {what} {problem}")
    return os.path.realpath(root)


def resolve_roots(roots: Iterable[str]) -> tuple[str, ...]:
    """The configured roots resolved (symlinks followed), in order, without duplicates."""
    out: list[str] = []
    for root in roots:
        real = check_root(root, "VCL_ALLOWED_ROOTS")
        if real not in out:
            out.append(real)
    return tuple(out)


__all__ = ["DEFAULT_ROOTS", "check_root", "parse_roots", "resolve_roots", "root_problem"]
