"""The operator's kit: systemd units (``deploy/systemd``) and the settings' environment file.

``vcl-worker install-units [--prefix DIR]`` copies ``vcl-worker@.service`` and
``vcl-dispatcher.service`` into ``DIR/etc/systemd/system`` (``ExecStart`` pointing at this
installation's ``vcl-worker``), ``vcl-worker.env.example`` into ``DIR/etc/vcl-worker`` (and, when
absent, the same file as ``vcl-worker.env``, mode 0600: it will hold the database password), and a
drop-in giving the worker write access to the allowed roots and ``VCL_LOCK_DIR`` of that env file
(the unit mounts everything else read-only). It prints the ``systemctl`` lines to run.

The env example is generated from the settings' one declaration (:func:`env_example`), so it lists
every setting with its default and meaning; ``python -m worker.install_units --env-example`` prints
it and a test keeps ``deploy/systemd/vcl-worker.env.example`` current.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

from worker.config import Settings, env_text, setting_specs
from worker.rootdirs import parse_roots

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNITS = ("vcl-worker@.service", "vcl-dispatcher.service")
ENV_EXAMPLE = "vcl-worker.env.example"
ENV_FILE = "vcl-worker.env"
#: The executable the units in deploy/ name; install_units rewrites it to the installed one.
UNIT_EXECUTABLE = "/usr/local/bin/vcl-worker"
DROPIN = "vcl-worker@.service.d/50-datastore.conf"


def env_example() -> str:
    """The environment file with every setting commented out at its default, each under its meaning."""
    lines = [
        "# vcl-worker settings, read by vcl-worker@.service and vcl-dispatcher.service",
        "# (EnvironmentFile=/etc/vcl-worker/vcl-worker.env). Generated from worker/config.py:",
        "# `python -m worker.install_units --env-example`. A commented line is the default; uncomment",
        "# and change what the site needs. Keep this file 0600: URLs carry the database password.",
        "# After a change: `vcl-worker check --vmhost <host>` (or --management-node), then restart.",
    ]
    defaults = Settings()
    for name, spec in setting_specs().items():
        doc = spec.doc.replace("`", "")
        lines += ["", *textwrap.wrap(doc, 98, initial_indent="# ", subsequent_indent="# ")]
        lines.append(f"#{spec.env}={env_text(getattr(defaults, name))}")
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a systemd environment file (comments, blanks and quotes handled simply)."""
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def writable_paths(env: Mapping[str, str]) -> list[str]:
    """The directories the worker writes (allowed roots, repository root, lock dir's parent)."""
    settings = Settings.from_env(env)
    roots = [*parse_roots(settings.allowed_roots), settings.repository_root.strip()]
    out = [r for r in roots if r]
    out.append(os.path.dirname(settings.lock_dir.rstrip("/")) or settings.lock_dir)
    return list(dict.fromkeys(out))


def dropin(paths: list[str]) -> str:
    """The worker unit's drop-in: ``ReadWritePaths`` for ``paths`` (``-``: a missing one is skipped)."""
    return (
        "# Written by `vcl-worker install-units` from the allowed roots and VCL_LOCK_DIR of\n"
        "# /etc/vcl-worker/vcl-worker.env: run it again after changing them (or edit this file).\n"
        "[Service]\n" + "".join(f"ReadWritePaths=-{p}\n" for p in paths)
    )


def installed_executable() -> str:
    """This installation's ``vcl-worker`` (next to the running interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "vcl-worker"
    if beside.exists():
        return str(beside)
    return shutil.which("vcl-worker") or UNIT_EXECUTABLE


def install_units(prefix: Path, executable: str | None = None) -> list[str]:
    """Install the units, the env example (and the env file when absent) and the worker's drop-in
    under ``prefix``; returns the lines to tell the operator."""
    exe = executable or installed_executable()
    unit_dir = prefix / "etc" / "systemd" / "system"
    env_dir = prefix / "etc" / "vcl-worker"
    unit_dir.mkdir(parents=True, exist_ok=True)
    env_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for unit in UNITS:
        text = (DEPLOY / unit).read_text(encoding="utf-8").replace(UNIT_EXECUTABLE, exe)
        (unit_dir / unit).write_text(text, encoding="utf-8")
        done.append(f"installed {unit_dir / unit}")
    (env_dir / ENV_EXAMPLE).write_text(env_example(), encoding="utf-8")
    env_file = env_dir / ENV_FILE
    if not env_file.exists():
        env_file.write_text(env_example(), encoding="utf-8")
        done.append(f"installed {env_file} (every setting at its default: edit it)")
    else:
        done.append(f"kept {env_file}; {env_dir / ENV_EXAMPLE} lists every setting")
    env_file.chmod(0o600)
    paths = writable_paths(read_env_file(env_file))
    drop = unit_dir / DROPIN
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_text(dropin(paths), encoding="utf-8")
    done.append(f"installed {drop} (ReadWritePaths: {' '.join(paths)})")
    return [
        *done,
        "next: edit the env file and run `systemctl daemon-reload`; then on each VM host (NAME: its",
        "short name in VCL):",
        "  vcl-worker check --vmhost NAME && systemctl enable --now vcl-worker@NAME",
        "and on the management node:",
        "  vcl-worker check --management-node && systemctl enable --now vcl-dispatcher",
    ]


__all__ = ["DEPLOY", "ENV_EXAMPLE", "UNITS", "UNIT_EXECUTABLE", "dropin", "env_example", "install_units"]

if __name__ == "__main__":
    # `--env-example` prints the env file; `--update PATH` rewrites the committed example.
    if sys.argv[1:] == ["--env-example"]:
        sys.stdout.write(env_example())
    elif sys.argv[1:] == ["--update"]:
        (DEPLOY / ENV_EXAMPLE).write_text(env_example(), encoding="utf-8")
    else:
        sys.exit("usage: python -m worker.install_units --env-example | --update")
