"""Driver for libvirt's in-memory ``test:///default`` hypervisor.

Everything on disk is real (master materialisation, qcow2 overlays, capture by ``qemu-img``); only
the domains are simulated by libvirt's test driver. The embedded demo falls back to it when
``qemu:///system`` does not answer, and says so. It never matches a real hypervisor connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.hypervisors import qemuimg
from worker.hypervisors.drivers.base import register_driver
from worker.hypervisors.drivers.kvm import KVMDriver

if TYPE_CHECKING:
    from worker.hypervisors.host import LibvirtHost


class SimulatedDriver(KVMDriver):
    name = "Simulated"
    # libvirt's test driver only pretends to run domains: nothing boots, nothing can answer.
    boots_guests = False

    def probe(self, host: LibvirtHost) -> bool:
        return host.hypervisor_type().upper() == "TEST" and qemuimg.available()

    def get_domain_type(self, host: LibvirtHost, override: str = "") -> str:
        return "test"


register_driver("Simulated", SimulatedDriver)
