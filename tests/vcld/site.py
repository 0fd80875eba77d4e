"""The VCL site the vcld tests run: VCL's web database (seeded by its runner) turned into one or two
KVM hosts with one libvirt VM each, all provisioned through the bridge, real guests on isolated
networks. Host 2 may be a real second VM host (its own libvirtd in its own namespaces, see
:mod:`worker.devkit.second_host`); the site may have an image repository both hosts see."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import libvirt
import redis
from sqlalchemy import Engine, text

from tests.vcld.runners import REGISTER_SQL, Vcld, VclWeb
from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.libvirt_env import SYSTEM_URI
from worker.devkit.second_host import SecondHost

IMAGE_ID, FIRST_IMAGENAME = 101, "linux-ProbeKVM-101-v0"
T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    """A VM host of the site and its one VM; paths are as the host itself sees them."""

    computer_id: int
    vmhost_id: int
    short: str
    datastore: Path
    vm_id: int
    vm_short: str
    vm_ip: str
    network: str  # its libvirt network (the vmprofile's virtualswitch0/1)
    host_address: str  # the host's own address on that network (what its guests see us as)
    vm_ram: int = 2048  # computer.RAM of its VM (the web allocates the smallest that fits first)
    machine: SecondHost | None = None  # None: this machine's libvirtd

    @property
    def uri(self) -> str:
        return SYSTEM_URI if self.machine is None else self.machine.uri

    def here(self, path: Path | str) -> Path:
        """Where a path of this host lies for the tests' (the first host's) processes."""
        return Path(path) if self.machine is None else self.machine.on_host(path)


_SITE_SQL = """
-- the management node vcld runs as: hostname = vcld.conf FQDN, SSH identity for the guests
UPDATE managementnode SET hostname = '{fqdn}', IPaddress = '127.0.0.1', `keys` = '{key}',
  installpath = '{install}', checkininterval = 5, sysadminEmailAddress = NULL, sharedMailBox = NULL,
  lastcheckin = NOW() - INTERVAL 1 HOUR WHERE id = 101;
-- the request the web runner made while setting up (before this site existed): gone
DELETE FROM computerloadlog; DELETE FROM reservation; DELETE FROM request;
{register}
-- user vclprobe holds two reservations at once in the two-host test (group 'global')
UPDATE usergroup SET overlapResCount = 2 WHERE id = 1;
"""
PROBE_OS = "probelinux"
# The runner's probe OS module (guest-side steps only logged), registered as an OS row.
_PROBE_OS_SQL = """
INSERT INTO module (name, prettyname, description, perlpackage)
VALUES ('os_probe', 'Probe Linux OS', 'Linux with guest steps stubbed', 'VCL::Module::OS::Linux::probe');
INSERT INTO OS (name, prettyname, type, installtype, minram, sourcepath, moduleid)
VALUES ('probelinux', 'Probe Linux (guest steps stubbed)', 'linux', 'vmware', 512, 'vmware_images',
        LAST_INSERT_ID());
"""
# Image 101 on an OS row (hence its OS module) and with its minimum RAM (the guest's memory).
_IMAGE_SQL = """
UPDATE image SET OSid = (SELECT id FROM OS WHERE name = '{os}'), minram = {minram} WHERE id = 101;
"""
_COPIED = (
    "stateid, ownerid, platformid, scheduleid, currentimageid, nextimageid, imagerevisionid, RAM, "
    "procnumber, procspeed, network, type, provisioningid, drivetype, deleted, notes, predictivemoduleid"
)
# Host 2 and its VM: copies of seed.sql's host 101 / VM 102 with their resources and groups.
_SECOND_HOST_SQL = """
INSERT INTO vmprofile (profilename, imageid, repositoryimagetypeid, datastorepath, datastoreimagetypeid,
                       vmpath, virtualswitch0, virtualswitch1, vmdisk)
SELECT 'bridge {short}', imageid, repositoryimagetypeid, '{ds}', datastoreimagetypeid, '{ds}', '{net}',
       '{net}', vmdisk FROM vmprofile WHERE profilename = 'KVM - local storage';
INSERT INTO computer (id, hostname, IPaddress, privateIPaddress, eth0macaddress, eth1macaddress, {cols})
SELECT {cid}, 'x{cid}', '127.0.2.{cid}', '127.0.2.{cid}', '52:54:02:00:00:{i:02x}', '52:54:03:00:00:{i:02x}',
       {cols} FROM computer WHERE id = 101;
INSERT INTO vmhost (id, computerid, vmprofileid)
SELECT {vmhost}, {cid}, id FROM vmprofile WHERE profilename = 'bridge {short}';
INSERT INTO computer (id, hostname, IPaddress, privateIPaddress, eth0macaddress, eth1macaddress, {cols},
                      vmhostid)
SELECT {vm}, 'x{vm}', '0', '0', '{mac0}', '{mac1}', {cols}, vmhostid FROM computer WHERE id = 102;
INSERT INTO resource (resourcetypeid, subid) VALUES (12, {cid}), (12, {vm});
INSERT INTO resourcegroupmembers (resourceid, resourcegroupid)
SELECT id, 1 FROM resource WHERE resourcetypeid = 12 AND subid IN ({cid}, {vm});
INSERT INTO resourcegroupmembers (resourceid, resourcegroupid)
SELECT id, 5 FROM resource WHERE resourcetypeid = 12 AND subid = {vm};
"""
_HOST_SQL = """
INSERT IGNORE INTO vmprofile (profilename, imageid, repositoryimagetypeid, datastorepath,
                              datastoreimagetypeid, vmpath, virtualswitch0, virtualswitch1, vmdisk)
SELECT 'bridge {short}', imageid, repositoryimagetypeid, '{ds}', datastoreimagetypeid, '{ds}', '{net}',
       '{net}', vmdisk FROM vmprofile WHERE profilename = 'KVM - local storage';
UPDATE vmprofile SET repositorypath = {repo} WHERE profilename = 'bridge {short}';
UPDATE vmhost SET vmprofileid = (SELECT id FROM vmprofile WHERE profilename = 'bridge {short}')
 WHERE id = {vmhost};
UPDATE computer SET hostname = '{short}.example.org' WHERE id = {cid};
UPDATE computer SET hostname = '{vm_short}.example.org', IPaddress = '{ip}', privateIPaddress = '{ip}',
       eth0macaddress = '{mac0}', eth1macaddress = '{mac1}', vmhostid = {vmhost}, stateid = 2, RAM = {ram},
       provisioningid = (SELECT id FROM provisioning WHERE name = 'vcl_worker')
 WHERE id = {vm};
"""


def overlay_sql(
    fqdn: str,
    key: Path,
    install: Path,
    hosts: list[Host],
    *,
    repository: Path | None = None,
    os_name: str = PROBE_OS,
    minram: int = 512,
    mac_seed: int = 0,
) -> str:
    """What an admin does to a fresh VCL site to run it through the bridge: the management node, the
    bridge's module rows, the hosts with their VMs (vmprofile per host; ``repository``: every
    profile's repositorypath), image 101 on OS ``os_name`` (the runner's probe module when
    :data:`PROBE_OS`). ``mac_seed`` (a byte) makes the VMs' MACs this site's own: the worker finds a
    computer's domains by MAC on the host's libvirtd, which other sites' guests may share."""
    out = [_SITE_SQL.format(fqdn=fqdn, key=key, install=install, register=REGISTER_SQL.read_text())]
    if os_name == PROBE_OS:
        out.append(_PROBE_OS_SQL)
    out.append(_IMAGE_SQL.format(os=os_name, minram=int(minram)))
    repo = "NULL" if repository is None else f"'{repository}'"
    for i, h in enumerate(hosts, 1):
        values = {
            "short": h.short, "ds": h.datastore, "net": h.network, "cols": _COPIED, "cid": h.computer_id,
            "i": i, "vmhost": h.vmhost_id, "vm": h.vm_id, "vm_short": h.vm_short, "ip": h.vm_ip,
            "mac0": f"52:54:00:{mac_seed:02x}:{h.vm_id:02x}:{i:02x}",
            "mac1": f"52:54:01:{mac_seed:02x}:{h.vm_id:02x}:{i:02x}",
            "repo": repo, "ram": int(h.vm_ram),
        }  # fmt: skip
        if h.computer_id != 101:
            out.append(_SECOND_HOST_SQL.format(**values))
        out.append(_HOST_SQL.format(**values))
    return "\n".join(out)


@dataclass
class BridgeSite:
    web: VclWeb
    vcld: Vcld
    engine: Engine
    hosts: list[Host]
    workers: dict[str, CeleryWorker]
    results_redis_url: str
    private_key: Path
    timings: dict[str, Any] = field(default_factory=dict)
    repository: Path | None = None  # the vmprofiles' repositorypath (the same path on every host)

    def one(self, query: str, **params: Any) -> Any:
        with self.engine.connect() as c:
            return c.execute(text(query), params).one_or_none()

    def all(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as c:
            return list(c.execute(text(query), params).all())

    def request_state(self, request_id: int) -> tuple[str, str] | None:
        row = self.one(
            "SELECT s.name, l.name FROM request r JOIN state s ON s.id = r.stateid"
            " JOIN state l ON l.id = r.laststateid WHERE r.id = :r",
            r=request_id,
        )
        return None if row is None else (row[0], row[1])

    def computer(self, computer_id: int) -> Any:
        return self.one(
            "SELECT s.name AS state, c.imagerevisionid, c.currentimageid FROM computer c"
            " JOIN state s ON s.id = c.stateid WHERE c.id = :c",
            c=computer_id,
        )

    def reservation(self, request_id: int) -> Any:
        return self.one(
            "SELECT id, computerid, imagerevisionid FROM reservation WHERE requestid = :r", r=request_id
        )

    def host_of_vm(self, vm_id: int) -> Host:
        return next(h for h in self.hosts if h.vm_id == vm_id)

    def status(self, request_id: int) -> str:
        return str(self.web.rpc("XMLRPCgetRequestStatus", request_id).get("status"))

    def wait(self, what: str, fn: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.vcld.alive():
                raise AssertionError(f"vcld died while waiting for {what}:\n{self.vcld.tail()}")
            value = fn()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\nvcld log:\n{self.vcld.tail()}")

    def calls(self, reservation_id: int | None = None) -> list[dict[str, Any]]:
        """Every finished ``vcl.call`` task (Celery's result backend), oldest first."""
        r = redis.Redis.from_url(self.results_redis_url)
        out = []
        for key in r.scan_iter("celery-task-meta-*"):
            meta = json.loads(r.get(key) or b"{}")
            res = meta.get("result")
            if meta.get("name") != "vcl.call" or not isinstance(res, dict):
                continue
            if reservation_id is None or res.get("reservation_id") == reservation_id:
                out.append({**res, "date_done": meta.get("date_done")})
        return sorted(out, key=lambda m: str(m["date_done"]))

    def domains(self, short: str) -> dict[str, int]:
        """{name: state} of the VM ``short``'s domains, on its own host's libvirtd."""
        uri = next((h.uri for h in self.hosts if h.vm_short == short), SYSTEM_URI)
        conn = libvirt.open(uri)
        try:
            return {
                d.name(): d.state()[0] for d in conn.listAllDomains(0) if d.name().startswith(short + "_")
            }
        finally:
            conn.close()
