"""`vcl-worker check` on the real stack: MariaDB from vcl.sql with a seeded site, Redis, libvirtd at
qemu:///system (an isolated network as the profile's switch), a datastore and repository under
/var/lib/libvirt/images. A healthy setup passes; each broken setting or row gives exactly one
problem line naming it, and exit 1."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
import redis
from sqlalchemy import Engine, select, update

from worker.cli import main
from worker.db import models as m
from worker.db.engine import make_engine, make_session_factory
from worker.db.seed import SiteSpec, seed_site
from worker.devkit.commands import run_vcl_worker
from worker.devkit.database import create_test_database, drop_test_database, mariadb_available
from worker.devkit.libvirt_env import (
    SYSTEM_URI,
    TEST_ROOT,
    connect,
    ensure_isolated_network,
    make_datastore,
    remove_datastore,
    remove_network,
    system_available,
)
from worker.devkit.require import missing_service
from worker.hypervisors.domain_type import KVM, choose_domain_type


@dataclass(frozen=True)
class Site:
    env: dict[str, str]
    engine: Engine
    vmhost: str
    profile_id: int
    mn_id: int
    datastore: Path
    repository: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not mariadb_available():
        missing_service("MariaDB at 127.0.0.1:3306 (root, no password) is not reachable")
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/11").ping()
    except redis.RedisError:
        missing_service("Redis at 127.0.0.1:6379 is not reachable")
    if not system_available():
        missing_service("libvirtd at qemu:///system is not reachable")
    run = uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp("check")
    key = tmp / "vcl.key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key))
    with contextlib.ExitStack() as done:
        url = create_test_database()
        done.callback(drop_test_database, url)
        network = ensure_isolated_network(f"vclchk-{run}")
        done.callback(remove_network, network)
        datastore, repository = make_datastore(f"check-{run}"), make_datastore(f"check-{run}-repo")
        done.callback(remove_datastore, datastore)
        done.callback(remove_datastore, repository)
        (repository / "vmwarelinux-base1-v0.qcow2").write_bytes(b"\0" * 65536)
        engine = make_engine(url)
        done.callback(engine.dispose)
        seeded = seed_site(
            make_session_factory(engine),
            SiteSpec(
                datastore_path=str(datastore), vm_path=str(datastore), repository_path=str(repository),
                virtualswitch0=network, virtualswitch1=network, vmhost_hostname=f"chk{run}.example.org",
                management_node_keys=str(key),
            ),
        )  # fmt: skip
        env = {
            "VCL_DATABASE_URL": url,
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/12",
            "VCL_LOCK_REDIS_URL": "redis://127.0.0.1:6379/13",
            "VCL_LIBVIRT_URI": SYSTEM_URI,
            "VCL_ALLOWED_ROOTS": str(TEST_ROOT),
            "VCL_REPOSITORY_ROOT": "",
            "VCL_LOCK_DIR": str(tmp / "locks"),
            "VCL_MANAGEMENT_NODE_ID": str(seeded.management_node_id),
            "VCL_DOMAIN_TYPE": "",
            "VCL_POST_LOAD": "ssh",
        }
        yield Site(
            env, engine, f"chk{run}", seeded.vmprofile_id, seeded.management_node_id, datastore, repository
        )


def check(site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
          **env: str) -> tuple[int, list[str]]:  # fmt: skip
    """`vcl-worker check ARGS` in this process with the site's settings (plus ``env``): exit code
    and its problem lines."""
    connect(SYSTEM_URI, wait=120).close()  # another suite on this host may be restarting libvirtd
    for name, value in {**site.env, **env}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    rc = main(["check", *args])
    out = capsys.readouterr().out
    return rc, [line.removeprefix("PROBLEM: ") for line in out.splitlines() if line.startswith("PROBLEM: ")]


@contextlib.contextmanager
def changed(engine: Engine, table: Any, row_id: int, **values: Any) -> Iterator[None]:
    """Row ``row_id`` of ``table`` with ``values`` for the block, then as it was."""
    columns = [getattr(table, k) for k in values]
    with engine.begin() as conn:
        before = conn.execute(select(*columns).where(table.id == row_id)).one()
        conn.execute(update(table).where(table.id == row_id).values(**values))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(
                update(table).where(table.id == row_id).values(**dict(zip(values, before, strict=True)))
            )


def test_healthy_host_and_management_node_pass(site: Site) -> None:
    connect(SYSTEM_URI, wait=120).close()
    env = {**os.environ, **site.env}
    host = run_vcl_worker(env, "check", "--vmhost", site.vmhost, timeout=120)
    assert host.returncode == 0, host.stdout + host.stderr
    assert f"VM host {site.vmhost}: all checks passed" in host.stdout
    assert "domain type " in host.stdout and "virtual switches" in host.stdout
    mn = run_vcl_worker(env, "check", "--management-node", timeout=120)
    assert mn.returncode == 0, mn.stdout + mn.stderr
    assert "managementnode.keys" in mn.stdout and "management node: all checks passed" in mn.stdout


def test_management_node_check_never_loads_libvirt(site: Site) -> None:
    code = (
        "import sys; from worker.cli import main; rc = main(['check', '--management-node']); "
        "assert 'libvirt' not in sys.modules, 'libvirt loaded'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **site.env}, capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


BROKEN_SETTINGS = {
    "libvirt unreachable": ({"VCL_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"},
                            "VCL_LIBVIRT_URI=qemu+unix:///system?socket=/nonexistent/libvirt-sock: "),
    "missing database": ({"VCL_DATABASE_URL": "mysql+pymysql://root@127.0.0.1/vcl_check_nodb"},
                         "VCL_DATABASE_URL=mysql+pymysql://root@127.0.0.1/vcl_check_nodb: cannot connect"),
    "broker on a closed port": ({"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"},
                                "CELERY_BROKER_URL=redis://127.0.0.1:1/0: unreachable"),
    "lock Redis on a closed port": ({"VCL_LOCK_REDIS_URL": "redis://:secret@127.0.0.1:1/2"},
                                    "VCL_LOCK_REDIS_URL=redis://:***@127.0.0.1:1/2: unreachable"),
    "invalid setting": ({"VCL_LOCK_LEASE": "1"}, "setting VCL_LOCK_LEASE must be >= 3"),
    "lock dir under a file": ({"VCL_LOCK_DIR": "/etc/hostname/locks"}, "VCL_LOCK_DIR=/etc/hostname/locks"),
    "roots exclude the datastore": ({"VCL_ALLOWED_ROOTS": "/srv/vcl-none"}, "outside the allowed roots"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN_SETTINGS))
def test_a_broken_setting_is_named(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    env, expected = BROKEN_SETTINGS[case]
    rc, problems = check(site, monkeypatch, capsys, "--vmhost", site.vmhost, **env)
    assert rc == 1
    assert any(expected in p for p in problems), problems
    if case != "roots exclude the datastore":  # there: datastore, vmpath and repository
        assert len(problems) == 1, problems
    assert "secret" not in " ".join(problems)


def test_kvm_without_hardware_virtualization(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if choose_domain_type(None).domain_type == KVM:
        pytest.skip("this host has hardware KVM: VCL_DOMAIN_TYPE=kvm is right here")
    rc, problems = check(site, monkeypatch, capsys, "--vmhost", site.vmhost, VCL_DOMAIN_TYPE="kvm")
    assert rc == 1 and len(problems) == 1, problems
    assert problems[0].startswith("VCL_DOMAIN_TYPE=kvm but this host cannot run kvm guests: ")


def test_broken_rows_are_named(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    vp, mn = m.VMProfileRow, m.ManagementNode
    cases: list[tuple[Any, int, dict[str, Any], str]] = [
        (vp, site.profile_id, {"datastorepath": "/etc"}, "datastorepath (of vmhost chk"),
        (vp, site.profile_id, {"virtualswitch0": "vclchk-no-such-net"}, "virtualswitch0 (of vmhost"),
        (mn, site.mn_id, {"keys": "/nonexistent/vcl.key"}, "/nonexistent/vcl.key does not exist"),
    ]
    for table, row_id, values, expected in cases:
        with changed(site.engine, table, row_id, **values):
            rc, problems = check(site, monkeypatch, capsys, "--vmhost", site.vmhost)
        assert rc == 1 and len(problems) == 1, (values, problems)
        assert expected in problems[0], problems
        assert "outside the allowed roots" in problems[0] or values.get("datastorepath") is None


def test_unreadable_keys_fail_the_management_node(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_key = site.repository / "not-a-key"
    not_a_key.write_text("hello\n")
    with changed(site.engine, m.ManagementNode, site.mn_id, keys=str(not_a_key)):
        rc, problems = check(site, monkeypatch, capsys, "--management-node")
    assert rc == 1 and len(problems) == 1, problems
    assert problems[0].startswith(
        f"managementnode.keys of management node mn1.example.org (id {site.mn_id}): "
    )
    assert "is not a private key" in problems[0]


def test_datastore_unreachable_by_qemu_and_full(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(site.datastore, 0o700)
    try:
        rc, problems = check(site, monkeypatch, capsys, "--vmhost", site.vmhost)
    finally:
        os.chmod(site.datastore, 0o755)
    assert rc == 1 and problems, problems
    assert all("QEMU's user" in p and "cannot read" in p for p in problems), problems
    huge = site.repository / "huge-v0.qcow2"
    with huge.open("wb") as fh:
        fh.truncate(shutil.disk_usage(site.datastore).free + (1 << 30))  # sparse: nothing on disk
    try:
        rc, problems = check(site, monkeypatch, capsys, "--vmhost", site.vmhost)
    finally:
        huge.unlink()
    assert rc == 1 and len(problems) == 1, problems
    assert "MiB free, a master copy of the largest image" in problems[0] and str(huge) in problems[0]


def test_unknown_vmhost(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, problems = check(site, monkeypatch, capsys, "--vmhost", "vclchk-nohost")
    assert rc == 1 and problems == [
        "vmhost vclchk-nohost: no vmhost row whose computer.hostname is vclchk-nohost (--vmhost)"
    ]
