"""Hypervisor drivers (libvirt.pm's ``$self->{driver}``) and the registry that picks one."""

from __future__ import annotations

from worker.hypervisors.drivers.base import Driver, select_driver
from worker.hypervisors.drivers.kvm import KVMDriver
from worker.hypervisors.drivers.simulated import SimulatedDriver

__all__ = ["Driver", "KVMDriver", "SimulatedDriver", "select_driver"]
