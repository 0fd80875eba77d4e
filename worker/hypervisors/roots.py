"""The directories the worker may create, walk or delete files in (``VCL_ALLOWED_ROOTS``).

Every path the worker touches comes from the VCL database (``vmprofile`` datastore, vmpath and
repository). A database row pointing at ``/etc`` or ``/home`` must be refused before anything is
created, walked or deleted there, so each such path is resolved (symlinks, ``..``) and checked to lie
under a configured root. Files found by walking a directory are checked the same way: a symlink in the
datastore must not make a "master" out of a host file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from worker.hypervisors.errors import InvalidInputError

# The roots as settings text live in the neutral worker.rootdirs (the settings check them too and must
# not import the core); re-exported here for the callers that always found them in this module.
from worker.rootdirs import DEFAULT_ROOTS, check_root, parse_roots, resolve_roots


def is_under(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def under_roots(path: str, roots: Sequence[str], what: str) -> str:
    """``path`` resolved (symlinks, ``..``) if it lies under one of ``roots``; else a clear
    :class:`InvalidInputError` naming the setting, the value and where it resolves to."""
    real = os.path.realpath(path)
    if not roots:
        raise InvalidInputError(f"{what} {path!r}: no allowed roots are configured (VCL_ALLOWED_ROOTS)")
    if not any(is_under(real, r) for r in roots):
        where = "" if real == os.path.normpath(path) else f" (resolves to {real!r})"
        raise InvalidInputError(
            f"{what} {path!r}{where} is outside the allowed roots {', '.join(roots)} (VCL_ALLOWED_ROOTS)"
        )
    return real


def inside(path: str, directory: str, what: str) -> str:
    """A file found below ``directory`` must resolve below it: a symlink out of it is refused."""
    real = os.path.realpath(path)
    if not is_under(real, os.path.realpath(directory)):
        raise InvalidInputError(f"{what} {path!r} resolves to {real!r}, outside {directory!r}; refusing it")
    return real


__all__ = ["DEFAULT_ROOTS", "check_root", "inside", "is_under", "parse_roots", "resolve_roots", "under_roots"]
