"""``vcl-worker check --vmhost NAME``: what ``initialize`` checks and more, for one VM host.

Besides the management node's checks (:mod:`worker.check`): libvirt reachable at ``VCL_LIBVIRT_URI``
and a driver for it, the domain type and why, the host's ``vmprofile`` paths under the allowed roots,
writable by this worker and reachable by QEMU's user, the profile's switches present, free space on
the datastore for a master copy, ``VCL_LOCK_DIR`` and ``qemu-img``.

QEMU's user (``user =`` in libvirt's ``qemu.conf``, else the build's default documented there) needs
to reach (search every parent, read the directory) the datastore, vmpath and repository; it does not
write to them: this worker creates every file, and libvirt hands the running overlay to QEMU's user
(``dynamic_ownership``). ACLs are not read.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from worker.check import (
    HostProfile,
    Report,
    host_profile,
    keys_check,
    lock_dir_problems,
    read_settings,
    service_checks,
)
from worker.config import Settings, env_name
from worker.hypervisors.domain_spec import resolve_switch
from worker.hypervisors.domain_type import KVM, choose_domain_type
from worker.hypervisors.drivers import select_driver
from worker.hypervisors.errors import InvalidInputError, ProvisioningError
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.roots import under_roots

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
_USER_LINE = re.compile(r'^\s*(#?)\s*user\s*=\s*"([^"]+)"', re.MULTILINE)
_IMAGE_SUFFIXES = (".qcow2", ".img", ".raw", ".vmdk")
MIB = 1024 * 1024


def qemu_user(conf: Path = QEMU_CONF) -> tuple[str, int, frozenset[int]]:
    """(name, uid, gids) of the user libvirt runs QEMU as: ``user = "…"`` in ``qemu.conf``, else the
    commented default it documents (``#user = "libvirt-qemu"`` on Debian), else ``qemu``."""
    try:
        found = {commented: name for commented, name in _USER_LINE.findall(conf.read_text())}
    except OSError:
        found = {}
    name = found.get("") or found.get("#") or "qemu"
    if name.startswith("+") and name[1:].isdigit():
        uid = int(name[1:])
        entry = next((p for p in pwd.getpwall() if p.pw_uid == uid), None)
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else None
    if entry is None:
        return name, 0 if name == "+0" else -1, frozenset()
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    return entry.pw_name, entry.pw_uid, frozenset(gids)


def _allows(st: os.stat_result, uid: int, gids: frozenset[int], bits: str) -> bool:
    """Mode bits ``bits`` ("rx", "x") granted to ``uid``/``gids`` by ``st`` (owner, group, other)."""
    if uid == 0:
        return True
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    want = (4 if "r" in bits else 0) | (2 if "w" in bits else 0) | (1 if "x" in bits else 0)
    return (st.st_mode >> shift) & want == want


def qemu_reach_problem(path: str, user: tuple[str, int, frozenset[int]]) -> str | None:
    """Why QEMU's ``user`` cannot read directory ``path`` (a parent it cannot search), or None."""
    name, uid, gids = user
    if uid < 0:
        return f"QEMU's user {name!r} (libvirt's qemu.conf) does not exist"
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        d = Path(*parts[:i])
        bits = "rx" if i == len(parts) else "x"
        st = d.stat()
        if not _allows(st, uid, gids, bits):
            verb = "read" if bits == "rx" else "enter"
            mode = f"{stat.filemode(st.st_mode)}, uid {st.st_uid}, gid {st.st_gid}"
            return f"QEMU's user {name} cannot {verb} {d} ({mode})"
    return None


def _profile_paths(p: HostProfile) -> Iterator[tuple[str, str]]:
    yield "datastorepath", p.datastorepath
    yield ("vmpath", p.vmpath) if p.vmpath else ("datastorepath (as vmpath)", p.datastorepath)
    if p.repositorypath:
        yield "repositorypath", p.repositorypath


def path_problems(
    settings: Settings, profile: HostProfile, user: tuple[str, int, frozenset[int]]
) -> list[str]:
    """Each vmprofile path: under the allowed roots, an existing directory this worker can write,
    and reachable by QEMU's user."""
    problems = []
    for column, path in dict(_profile_paths(profile)).items():
        row = profile.row(column)
        try:
            real = under_roots(path, settings.roots, row)
        except InvalidInputError as exc:
            problems.append(str(exc))
            continue
        if not os.path.isdir(real):
            problems.append(f"{row} {path!r} is not a directory")
        elif not os.access(real, os.W_OK | os.X_OK):
            problems.append(f"{row} {path!r} is not writable by this worker (uid {os.getuid()})")
        elif (why := qemu_reach_problem(real, user)) is not None:
            problems.append(f"{row} {path!r}: {why}")
    return problems


def largest_image(directory: str, depth: int = 2) -> tuple[str, int] | None:
    """The largest disk image file (by size) at most ``depth`` levels below ``directory``."""
    best: tuple[str, int] | None = None
    base = directory.rstrip("/").count("/")
    for root, dirs, files in os.walk(directory):
        if root.rstrip("/").count("/") - base >= depth:
            dirs.clear()
        for name in files:
            if name.endswith(_IMAGE_SUFFIXES):
                path = os.path.join(root, name)
                try:
                    size = os.stat(path).st_size
                except OSError:
                    continue
                if best is None or size > best[1]:
                    best = (path, size)
    return best


def space_problems(profile: HostProfile) -> list[str]:
    """The datastore has room for a copy of the largest image in the repository or the datastore."""
    datastore = profile.datastorepath
    if not os.path.isdir(datastore):
        return []  # reported by path_problems
    sources = [d for d in (profile.repositorypath, datastore) if d and os.path.isdir(d)]
    found = [f for f in map(largest_image, sources) if f is not None]
    if not found:
        return []
    path, size = max(found, key=lambda f: f[1])
    free = shutil.disk_usage(datastore).free
    if free < size:
        return [
            f"{profile.row('datastorepath')} {datastore!r}: {free // MIB} MiB free, a master copy of "
            f"the largest image ({path}) needs {size // MIB} MiB"
        ]
    return []


def libvirt_problems(settings: Settings) -> tuple[LibvirtHost | None, list[str]]:
    """libvirt answers at ``VCL_LIBVIRT_URI`` and one of the worker's drivers takes it (initialize)."""
    host = LibvirtHost(settings.libvirt_uri)
    try:
        host.hypervisor_type()
        select_driver(host)
    except ProvisioningError as exc:
        host.close()
        return None, [f"{env_name('libvirt_uri')}={settings.libvirt_uri}: {exc}"]
    return host, []


def domain_type_check(report: Report, host: LibvirtHost, settings: Settings) -> None:
    """The domain type the worker would choose, and why; ``VCL_DOMAIN_TYPE=kvm`` without hardware KVM
    is a problem (guests would not start, or crawl under a paravirtual KVM)."""
    if host.hypervisor_type() != "QEMU":
        report.passed.append(f"domain type: not checked ({host.uri} is not QEMU)")
        return
    auto = choose_domain_type(None, libvirt_offers=host.offers_domain_type)
    override = settings.domain_type.strip().lower()
    if override == KVM and auto.domain_type != KVM:
        report.problems.append(
            f"{env_name('domain_type')}=kvm but this host cannot run kvm guests: {auto.reason}; "
            "leave it empty (auto) or set qemu"
        )
    elif override:
        report.passed.append(
            f"domain type {override}: set by {env_name('domain_type')} (auto: {auto.reason})"
        )
    else:
        report.passed.append(f"domain type {auto.domain_type}: {auto.reason}")


def network_active(host: LibvirtHost, name: str) -> bool:
    def active(conn: Any) -> bool:
        return bool(conn.networkLookupByName(name).isActive())

    return host.call(f"networkLookupByName({name})", active)


def switch_problems(host: LibvirtHost, profile: HostProfile) -> list[str]:
    """Each of the profile's switches is a libvirt network (active) or a host bridge."""
    problems = []
    for n, switch in enumerate((profile.virtualswitch0, profile.virtualswitch1)):
        if not switch:
            continue
        row = profile.row(f"virtualswitch{n}")
        try:
            kind, name = resolve_switch(host, switch, row)
            if kind == "network" and not network_active(host, name):
                problems.append(f"{row}: libvirt network {name!r} is defined but not active")
        except ProvisioningError as exc:
            problems.append(str(exc))
    return problems


def vmhost_report(vmhost: str, env: Mapping[str, str] | None = None) -> Report:
    """Everything the worker of VM host ``vmhost`` needs."""
    report = Report()
    settings, problems = read_settings(env)
    if not report.add(problems, "settings are valid") or settings is None:
        return report
    engine = service_checks(report, settings)
    report.add(lock_dir_problems(settings), f"{env_name('lock_dir')} {settings.lock_dir} is writable")
    qemu_img = shutil.which("qemu-img")
    report.add([] if qemu_img else ["qemu-img is not on PATH (package qemu-utils)"], f"qemu-img: {qemu_img}")
    host, problems = libvirt_problems(settings)
    report.add(problems, f"libvirt answers at {settings.libvirt_uri}")
    profile = None
    if engine is not None:
        try:
            if settings.post_load == "ssh":
                keys_check(report, engine, settings)
            profile = host_profile(engine, vmhost)
        finally:
            engine.dispose()
        if profile is None:
            report.problems.append(
                f"vmhost {vmhost}: no vmhost row whose computer.hostname is {vmhost} (--vmhost)"
            )
    try:
        if host is not None:
            domain_type_check(report, host, settings)
        if profile is not None:
            user = qemu_user()
            report.add(
                path_problems(settings, profile, user),
                f"{profile.row('paths')}: usable (QEMU's user {user[0]})",
            )
            report.add(space_problems(profile), f"{profile.row('datastorepath')}: room for a master copy")
            if host is not None:
                report.add(switch_problems(host, profile), f"{profile.row('virtual switches')}: present")
    finally:
        if host is not None:
            host.close()
    return report


__all__ = [
    "largest_image",
    "libvirt_problems",
    "path_problems",
    "qemu_reach_problem",
    "qemu_user",
    "space_problems",
    "switch_problems",
    "vmhost_report",
]
