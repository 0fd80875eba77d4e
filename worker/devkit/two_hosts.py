"""A stack's site with a second VM host: host B (:mod:`worker.devkit.second_host`) seeded into the
same VCL database as the web UI would (its own computer, vmprofile, vmhost and VM computers), a
datastore and a DHCP network of its own, and Celery workers that run *on* host B (inside its mount
and network namespaces, ``VCL_LIBVIRT_URI`` = its socket, ``VCL_VMHOST`` = its name) consuming
``vmhost.<hostB>``. Everything else (database, Redis, repository) is the stack's, as a site shares it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from worker.app import vmhost_queue
from worker.db import models as m
from worker.db.seed import create_request
from worker.db.seed.rows import id_by_name, pk
from worker.devkit.celery_worker import CeleryWorker, start_celery_worker
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork, create_dhcp_network, remove_network
from worker.devkit.second_host import SecondHost
from worker.devkit.stack import Stack

VM_INDEX_BASE = 0x80  # MACs 52:54:00:<seed>:<0x80+i>:<nic>: never one of host A's computers'


@dataclass(kw_only=True)
class HostB:
    """Host B of a stack's site; paths are as host B sees them."""

    stack: Stack
    host: SecondHost
    vmhost: str
    queue: str
    vmhost_id: int
    vmprofile_id: int
    computer_ids: tuple[int, ...]
    shorts: tuple[str, ...]
    datastore: Path
    network: DhcpNetwork
    env: dict[str, str]
    workers: list[CeleryWorker] = field(default_factory=list)

    def new_reservation(self, index: int = 0, imagerevision_id: int | None = None) -> tuple[int, int]:
        """A ``new`` request for computer ``index`` of host B: (request_id, reservation_id)."""
        site = self.stack.site
        rev = imagerevision_id or site.imagerevision_id
        with self.stack.sf() as s:
            image_id = s.execute(
                select(m.ImageRevision.imageid).where(m.ImageRevision.id == rev)
            ).scalar_one()
        return create_request(
            self.stack.sf, computer_id=self.computer_ids[index], image_id=image_id, imagerevision_id=rev,
            management_node_id=site.management_node_id, state="new", laststate="new",
        )  # fmt: skip

    def private_ip(self, index: int) -> str:
        return self.network.host_ip(20 + index)

    def domains(self, prefix: str = "") -> list[str]:
        conn = self.host.conn()
        try:
            return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))
        finally:
            conn.close()

    def start_worker(self, log_dir: Path, *, concurrency: int = 1, timeout: float = 90) -> CeleryWorker:
        """A prefork worker running on host B, consuming its queue; stopped at :meth:`close`."""
        worker = start_celery_worker(
            self.env, [self.queue], log_dir, host=self.vmhost, prefix="hostb", concurrency=concurrency,
            timeout=timeout, launcher=self.host.command([]),
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        conn = self.host.conn(wait=0)
        with contextlib.suppress(Exception):
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(tuple(s + "_" for s in self.shorts)):
                    with contextlib.suppress(Exception):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(Exception):
                        dom.undefineFlags(0)
        remove_network(conn, self.network.name)
        conn.close()


def _copy_row(s: Session, model: Any, src_id: int, **changes: Any) -> int:
    """Insert a copy of row ``src_id`` of ``model`` (its mapped columns) with ``changes``; its id."""
    table: Table = model.__table__
    row = s.execute(select(table).where(table.c.id == src_id)).mappings().one()
    # NULLs are left to the schema's defaults (VCL's NOT NULL columns the ORM reads back as None).
    values = {k: v for k, v in row.items() if k != "id" and v is not None}
    values.update(changes)
    return pk(s, insert(table).values(**values))


def _add_resource(s: Session, type_name: str, subid: int) -> None:
    s.execute(insert(m.Resource).values(resourcetypeid=id_by_name(s, m.ResourceType, type_name), subid=subid))


def add_host_b(
    stack: Stack,
    host: SecondHost,
    vms: int = 1,
    *,
    datastore: Path | None = None,
    master: bool = True,
) -> HostB:
    """Seed host B into ``stack``'s site with ``vms`` computers on a DHCP network of host B;
    ``datastore`` (a path host B sees; default a fresh one of its own) gets the stack's guest master
    unless ``master`` is False (then a load takes it from the repository). Close it before the stack."""
    site = stack.site
    tag = stack.config.tag
    store = datastore or host.make_datastore(f"vcl-worker-{tag}-{stack.run_id}-b")
    conn = host.conn()
    try:
        net = create_dhcp_network(conn, f"vcl{tag}b")
    finally:
        conn.close()
    vmhost = f"{tag}hostb{stack.run_id}"
    with stack.sf.begin() as s:
        host_computer = _copy_row(
            s, m.Computer, site.vmhost_computer_id, hostname=f"{vmhost}.example.org", IPaddress="192.0.2.2",
            privateIPaddress="192.0.2.2",
        )  # fmt: skip
        _add_resource(s, "computer", host_computer)
        profile = _copy_row(
            s, m.VMProfileRow, site.vmprofile_id, profilename=f"KVM - {vmhost}", datastorepath=str(store),
            vmpath=str(store), virtualswitch0=net.name, virtualswitch1=net.name,
        )  # fmt: skip
        vmhost_id = pk(s, insert(m.VMHost).values(computerid=host_computer, vmprofileid=profile))
        src = s.execute(select(m.Computer.eth0macaddress).where(m.Computer.id == site.computer_ids[0]))
        seed = str(src.scalar_one()).split(":")[3]
        ids = []
        for i in range(vms):
            ip = net.host_ip(20 + i)
            cid = _copy_row(
                s, m.Computer, site.computer_ids[0], hostname=f"{stack.prefix}b{i:02d}.example.org",
                IPaddress=ip, privateIPaddress=ip, vmhostid=vmhost_id,
                eth0macaddress=f"52:54:00:{seed}:{VM_INDEX_BASE + i:02x}:00",
                eth1macaddress=f"52:54:00:{seed}:{VM_INDEX_BASE + i:02x}:01",
            )  # fmt: skip
            _add_resource(s, "computer", cid)
            ids.append(cid)
    if master and stack.guest_image is not None:
        install_guest_master(stack.guest_image, host.on_host(store), site.imagename)
    env = {
        **stack.env, "VCL_LIBVIRT_URI": host.uri, "VCL_VMHOST": vmhost, "VCL_LOCK_DIR": str(store / ".locks"),
    }  # fmt: skip
    return HostB(
        stack=stack, host=host, vmhost=vmhost, queue=vmhost_queue(vmhost), vmhost_id=vmhost_id,
        vmprofile_id=profile, computer_ids=tuple(ids), datastore=store, network=net, env=env,
        shorts=tuple(f"{stack.prefix}b{i:02d}" for i in range(vms)),
    )  # fmt: skip
