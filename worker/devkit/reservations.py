"""Build :class:`Reservation` values without a database (core tests drive the provisioner with them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from worker.reservation import Reservation, VMProfile


def make_vmprofile(**overrides: Any) -> VMProfile:
    base: dict[str, Any] = dict(
        id=1,
        profile_name="KVM - local storage",
        datastore_path="/var/lib/libvirt/images",
        vm_path="/var/lib/libvirt/images",
        repository_path=None,
        datastore_imagetype="qcow2",
        repository_imagetype="qcow2",
        virtualswitch0="default",
        virtualswitch1="",
        eth0_generated=False,
        eth1_generated=False,
    )
    base.update(overrides)
    return VMProfile(**base)


def make_reservation(**overrides: Any) -> Reservation:
    """A reload of ``linux-CentOS7Base-3081-v5`` onto computer ``vm4-22``; any field can be overridden.

    ``vmprofile`` may be a VMProfile or a dict of VMProfile overrides.
    """
    vp = overrides.pop("vmprofile", None)
    if isinstance(vp, dict):
        vp = make_vmprofile(**vp)
    base: dict[str, Any] = dict(
        request_id=101,
        reservation_id=201,
        request_state="reload",
        request_laststate="reload",
        computer_id=22,
        computer_hostname="vm4-22.example.edu",
        computer_short_name="vm4-22",
        eth0_mac="52:54:00:aa:00:22",
        eth1_mac="52:54:00:bb:00:22",
        image_id=3081,
        image_name="linux-CentOS7Base-3081",
        image_prettyname="CentOS 7 Base (64 bit VM)",
        image_project="vcl",
        image_minram=512,
        image_minprocnumber=1,
        imagerevision_id=9001,
        imagerevision_revision=5,
        imagerevision_imagename="linux-CentOS7Base-3081-v5",
        os_name="vmwarelinux",
        os_type="linux",
        os_minram=256,
        vmhost_id=1,
        vmhost_computer_id=1,
        vmhost_short_name="kvmhost1",
        vmprofile=vp or make_vmprofile(),
        management_node_id=1,
        management_node_short_name="mn1",
    )
    base.update(overrides)
    return Reservation(**base)


def replace(res: Reservation, **changes: Any) -> Reservation:
    return dataclasses.replace(res, **changes)
