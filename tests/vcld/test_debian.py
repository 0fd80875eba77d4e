"""A Debian 12 reservation through VCL's real Linux OS module (issue 19): VCL's web, vcld, the bridge
and the worker, with vcld's own guest steps (user account, password, ext_sshd on the public address,
connection checks, reclaim, pre_capture) run on a real Debian guest.

**Which OS module.** Image 101 is put on vcl.sql's OS row ``vmwareubuntu`` (install type ``vmware``,
module ``VCL::Module::OS::Linux::Ubuntu``), not on the generic ``vmwarelinux``
(``VCL::Module::OS::Linux``). Ubuntu.pm inherits everything from Linux.pm and overrides what is Red
Hat-only there, each of which breaks a Debian 12 guest:

- ``set_password``: Linux.pm runs ``echo -e PW | /usr/bin/passwd -f USER --stdin``. Debian's
  passwd has no ``-f``/``--stdin`` (``invalid option -- 'f'``, exit 6, usage text); the output
  contains none of ``unknown user|warning|error``, so Linux.pm logs "changed password" and returns
  success while the reservation user's password (the one the web hands out) is never set: the user
  cannot log in. Ubuntu.pm uses ``chpasswd``.
- ``activate_interfaces`` (post_load): Linux.pm writes ``/etc/sysconfig/network-scripts/ifcfg-*``
  and runs ``ifup`` for interfaces without such a file; Ubuntu.pm does nothing (Debian's ifupdown or
  networkd already brought them up by DHCP).
- ``enable_dhcp`` (pre_capture): Linux.pm writes ``ifcfg-*`` files; Ubuntu.pm rewrites the public
  and private stanzas of ``/etc/network/interfaces`` to ``dhcp`` (and fails the capture when that
  file is empty or missing).
- ``set_static_public_address``/``install_package``: ifcfg/yum vs ``/etc/network/interfaces``/apt
  (unused here: the site's management node is ``dynamicDHCP``, no packages are installed).

What the module does in the guest, over SSH as root with ``managementnode.keys`` to the private
address (the guest needs, besides sshd under systemd: ``ifconfig``/``route``/``netstat`` of
net-tools, ``useradd``/``userdel``/``groupadd``/``chpasswd``, ``pkill``, ``df``, ``users``,
``hostnamectl``, a non-empty ``/etc/network/interfaces``):

- post_load (``vcl_worker.pm`` calls it after the worker's load): wait for SSH; firewall
  post-load (iptables only if the image has it); the public address (``dynamicDHCP``: the address of
  the interface that does not hold the private address, written to ``computer.IPaddress``);
  ``configure_ext_sshd``: sshd_config gets ``ListenAddress <private>`` (root only, keys only), a copy
  ``/etc/ssh/external_sshd_config`` listens on the public address (passwords allowed, no root) and
  an ``ext_sshd`` systemd unit is made from ``ssh.service`` (found through the ``sshd`` alias);
  random root password, hostname, ``vcl_post_load`` scripts.
- reserve (new.pm, before the web says ready): group ``vcl``, ``configure_ext_sshd`` again, the
  reservation user (``useradd -m``, ``chpasswd`` with the password the web returns), ``AllowUsers``
  in external_sshd_config, ``ext_sshd`` restarted.
- reserved.pm after Connect: grant_access starts ``ext_sshd``; every 15 s ``netstat -anp`` for an
  ESTABLISHED connection to ``<public address>:22`` from the remote IP given to the web (or any, with
  the user logged in): then ``inuse``.
- reclaim after the end (user was connected): a reload of a fresh disk (the worker's load).
- pre_capture ("End Reservation & Create Image"): currentimage.txt, logoff (``pkill -u``), the
  reservation users deleted, sshd back to its default (ext_sshd removed), DHCP in
  /etc/network/interfaces; then ``vcl_worker.pm`` shuts the guest down with Linux.pm's
  ``shutdown`` and the worker captures.

The user connects from this machine, so the remote IP it gives the web is the host's address on the
guests' network (what the guest sees as the source), the management node's too.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import paramiko
import pytest

from tests.vcld.runners import PASSWORD, USER
from tests.vcld.site import IMAGE_ID, BridgeSite, Host
from tests.vcld.steps import add, available, request_in, shares, shell, wait_available, wait_ready
from tests.vcld.web_ui import make_production

pytestmark = [pytest.mark.vcld, pytest.mark.debian, pytest.mark.slow, pytest.mark.timeout(5400)]
SHARED: dict[str, Any] = {}
LOGIN_TIMEOUT = 300  # grant_access starts ext_sshd after reserved.pm sees the Connect (1-10 s polls)
INUSE_TIMEOUT = 300  # reserved.pm checks for the connection every 15 s


def _connect_data(site: BridgeSite, request_id: int, remote_ip: str) -> dict[str, Any]:
    """The Connect button: ``XMLRPCgetRequestConnectData(request, remote IP)``."""
    data = site.web.rpc("XMLRPCgetRequestConnectData", request_id, remote_ip)
    assert data.get("status") == "ready", data
    return dict(data)


@contextlib.contextmanager
def _user_session(data: dict[str, Any], timeout: float = LOGIN_TIMEOUT) -> Iterator[paramiko.SSHClient]:
    """An SSH session as the reservation's user with the web's password to its public address and
    connect port, retried until ext_sshd lets the user in; kept open for the ``with`` block."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                str(data["serverIP"]), port=int(data["connectport"]), username=str(data["user"]),
                password=str(data["password"]), look_for_keys=False, allow_agent=False, timeout=10,
                banner_timeout=20, auth_timeout=20,
            )  # fmt: skip
        except (paramiko.SSHException, OSError) as exc:
            last = exc
            client.close()
            time.sleep(3)
            continue
        try:
            yield client
        finally:
            client.close()
        return
    raise AssertionError(
        f"{data['user']}@{data['serverIP']}:{data['connectport']} never let the user in: {last}"
    )


def _run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=60)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode(errors="replace")
    assert status == 0, f"{command}: {status} {out} {stderr.read().decode(errors='replace')}"
    return out


def _root(site: BridgeSite, host: Host, command: list[str]) -> tuple[int, str]:
    """``command`` as root in the guest (the site's key, the private address): (status, output)."""
    with shell(site, host.vm_ip) as sh:
        return sh.run(command)


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\|\d+\|(\d*)\|(\d*)\|[^|]*\|[^|]*\|\d+\|(.*)$")


def _vcld_times(site: BridgeSite, reservation_id: int, marks: dict[str, str]) -> dict[str, datetime]:
    """First vcld.log time of each mark (a message substring) in the reservation's processes."""
    found: dict[str, datetime] = {}
    for line in site.vcld.log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m or m.group(3) != str(reservation_id):
            continue
        for name, text in marks.items():
            if name not in found and text in m.group(4):
                found[name] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    return found


def _os_steps(site: BridgeSite, reservation_id: int) -> dict[str, float]:
    """Seconds of VCL's OS module steps in a reservation's load (from vcld's log)."""
    t = _vcld_times(site, reservation_id, {
        "load returned": "vcl-worker load returned", "post_load begins": "beginning Linux post_load tasks",
        "loaded": "was successfully reloaded on", "reserve begins": "beginning Linux reserve tasks",
        "reserve done": "Linux reserve tasks complete",
    })  # fmt: skip
    out = {}
    if "load returned" in t and "loaded" in t:
        out["OS post_load (after the worker's load)"] = (t["loaded"] - t["load returned"]).total_seconds()
    if "reserve begins" in t and "reserve done" in t:
        out["OS reserve (user account, ext_sshd)"] = (t["reserve done"] - t["reserve begins"]).total_seconds()
    return out


def _ready_with_timings(site: BridgeSite, label: str) -> tuple[int, Any]:
    request_id, t0 = add(site)
    wait_ready(site, request_id)
    res = site.reservation(request_id)
    site.timings[f"debian: {label}: XMLRPCaddRequest -> ready (s)"] = {
        **shares(site, res.id, time.monotonic() - t0),
        **_os_steps(site, res.id),
    }
    return request_id, res


def _login_until_inuse(site: BridgeSite, request_id: int, host: Host, label: str) -> str:
    """Connect as the user does and stay logged in until vcld says inuse; the user's ``id``."""
    t0 = time.monotonic()
    data = _connect_data(site, request_id, host.host_address)
    assert data["user"] == USER and data["password"], data
    public = site.one("SELECT IPaddress FROM computer WHERE id = :c", c=host.vm_id)[0]
    assert data["serverIP"] == public, (data, public)
    with _user_session(data) as client:
        t_login = time.monotonic() - t0
        ident = _run(client, "id")
        SHARED["marker"] = uuid.uuid4().hex
        _run(client, f"echo {SHARED['marker']} > ~/left-by-user && sync")
        site.wait(f"request {request_id} inuse", lambda: request_in(site, request_id, "inuse"), INUSE_TIMEOUT)
    site.timings[f"debian: {label}: Connect -> user logged in / -> inuse (s)"] = (
        round(t_login, 1), round(time.monotonic() - t0, 1),
    )  # fmt: skip
    return ident


def test_debian_reservation_user_logs_in_with_the_webs_password(debian_site: BridgeSite) -> None:
    site = debian_site
    (host,) = site.hosts
    request_id, res = _ready_with_timings(site, "first reservation")
    assert res.computerid == host.vm_id
    calls = site.calls(res.id)
    assert all(c["ok"] for c in calls), calls
    # VCL's module set the user up: the account, ext_sshd listening on the public address.
    code, out = _root(site, host, ["id", USER])
    assert code == 0, out
    assert _root(site, host, ["test", "-f", "/etc/ssh/external_sshd_config"])[0] == 0
    ident = _login_until_inuse(site, request_id, host, "first reservation")
    assert f"({USER})" in ident and "(vcl)" in ident, ident
    code, out = _root(site, host, ["cat", f"/home/{USER}/left-by-user"])
    assert code == 0 and out.strip() == SHARED["marker"], out
    SHARED["first"] = (request_id, res.id)


def test_end_reclaims_and_the_next_guest_has_nothing_of_the_user(debian_site: BridgeSite) -> None:
    site = debian_site
    (host,) = site.hosts
    request_id, reservation_id = SHARED["first"]
    t0 = time.monotonic()
    assert site.web.rpc("XMLRPCendRequest", request_id).get("status") == "success"
    wait_available(site, host.vm_id)
    site.timings["debian: XMLRPCendRequest -> reclaimed, reloaded, available (s)"] = round(
        time.monotonic() - t0, 1
    )
    reloads = [c for c in site.calls() if c["method"] == "load" and c["reservation_id"] != reservation_id]
    assert reloads and reloads[-1]["ok"], reloads
    # The reloaded guest: no account, no home of the user.
    assert _root(site, host, ["id", USER])[0] != 0, "the user's account survived the reload"
    assert _root(site, host, ["test", "-e", f"/home/{USER}"])[0] != 0
    # A new reservation (the same user again: a new account, a new password, an empty home).
    request_id, res = _ready_with_timings(site, "after the reload")
    code, _ = _root(site, host, ["test", "-e", f"/home/{USER}/left-by-user"])
    assert code != 0, "the previous user's file is in the new reservation's guest"
    SHARED["second"] = (request_id, res.id)


def test_capture_with_vcls_pre_capture_then_the_new_revision_lets_a_user_in(debian_site: BridgeSite) -> None:
    site = debian_site
    (host,) = site.hosts
    request_id, reservation_id = SHARED["second"]
    _login_until_inuse(site, request_id, host, "reservation to capture")
    # What the image's owner changed in it (as root: the user's own home goes with the account).
    marker = uuid.uuid4().hex
    with shell(site, host.vm_ip) as sh:
        sh.check(["sh", "-c", f"echo {marker} > /root/customized && sync"])
    t0 = time.monotonic()
    site.web.ui_capture(request_id)  # "End Reservation & Create Image"
    new_rev = site.one("SELECT imagerevisionid FROM reservation WHERE id = :r", r=reservation_id)[0]

    def captured() -> Any:
        row = site.one("SELECT imagename, deleted FROM imagerevision WHERE id = :i", i=new_rev)
        return row if row is not None and row.deleted == 0 else None

    site.wait("new revision captured", captured, 1800, 2)
    wait_available(site, host.vm_id, 1800)
    site.timings["debian: capture (VCL's pre_capture) -> captured, reloaded, available (s)"] = round(
        time.monotonic() - t0, 1
    )
    calls = {c["method"]: c for c in site.calls(reservation_id)}
    assert calls["capture"]["ok"] and calls["capture"]["result"] == 1, calls["capture"]
    # pre_capture removed the reservation's user before the disk was captured; the owner's change is in.
    assert _root(site, host, ["id", USER])[0] != 0
    assert _root(site, host, ["cat", "/root/customized"])[1].strip() == marker
    make_production(site.web.base, USER, PASSWORD, IMAGE_ID, new_rev)
    request_id, res = _ready_with_timings(site, "captured revision")
    assert res.imagerevisionid == new_rev
    ident = _login_until_inuse(site, request_id, host, "captured revision")
    assert f"({USER})" in ident, ident
    assert site.web.rpc("XMLRPCendRequest", request_id).get("status") == "success"
    wait_available(site, host.vm_id)
    assert available(site, host.vm_id)
