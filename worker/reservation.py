"""The immutable view of one VCL reservation that the provisioning core works from.

The DB layer (``worker.db``) fills it from the VCL schema; tests build it directly. Field names say
which VCL column each value comes from (see shared/reference/vcl-behaviour.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VMProfile:
    """``vmprofile`` row of the VM host (via ``vmhost.vmprofileid``) with its image types resolved."""

    id: int
    profile_name: str
    datastore_path: str  # vmprofile.datastorepath: where masters live
    vm_path: str  # vmprofile.vmpath, or datastorepath when NULL/empty: where COW overlays live
    repository_path: str | None  # vmprofile.repositorypath (None when not configured)
    datastore_imagetype: str  # imagetype.name via datastoreimagetypeid, e.g. "qcow2"
    repository_imagetype: str  # imagetype.name via repositoryimagetypeid
    virtualswitch0: str  # eth0: libvirt network name, else host bridge
    virtualswitch1: str  # eth1
    eth0_generated: bool  # vmprofile.eth0generated: random MAC instead of computer.eth0macaddress
    eth1_generated: bool


@dataclass(frozen=True, slots=True)
class Reservation:
    """Everything libvirt.pm/KVM.pm read from vcld's DataStructure for one reservation."""

    # request / reservation
    request_id: int
    reservation_id: int
    request_state: str  # state.name the work was claimed from (new, reload, image, tomaintenance, ...)
    request_laststate: str
    # computer (the VM being provisioned)
    computer_id: int
    computer_hostname: str  # computer.hostname (full)
    computer_short_name: str  # hostname up to the first "."
    eth0_mac: str | None  # computer.eth0macaddress
    eth1_mac: str | None  # computer.eth1macaddress
    # image and revision
    image_id: int
    image_name: str  # image.name
    image_prettyname: str
    image_project: str  # image.project: vcl | hpc | vclhpc
    image_minram: int  # MB
    image_minprocnumber: int
    imagerevision_id: int
    imagerevision_revision: int
    imagerevision_imagename: str  # "image name" in VCL's path rules (not image.name)
    # OS of the image
    os_name: str  # OS.name, e.g. vmwarelinux
    os_type: str  # OS.type, e.g. linux / windows
    os_minram: int  # MB
    # VM host and its profile
    vmhost_id: int
    vmhost_computer_id: int
    vmhost_short_name: str
    vmprofile: VMProfile
    # management node
    management_node_id: int
    management_node_short_name: str
    # How VCL reaches the guest (defaults keep older callers working).
    computer_private_ip: str | None = None  # computer.privateIPaddress: the address the guest must get
    image_reloadtime_minutes: int = 10  # image.reloadtime: VCL's expected load time, bounds readiness
    connect_ports: tuple[int, ...] = (22,)  # TCP ports of the image's connect methods (SSH 22, RDP 3389)
    management_node_keys: tuple[str, ...] = ()  # managementnode.keys: SSH identities for post-load
    # Which of this project's modules provisions the computer (module.perlpackage's last part):
    # "libvirt" (the dispatcher's) or "vcl_worker" (vcld's bridge, delegated mode).
    provisioning_module: str = "libvirt"

    @property
    def readiness_port(self) -> int:
        """The connect-method port that proves the guest is usable: SSH when offered, else the lowest."""
        if not self.connect_ports or 22 in self.connect_ports:
            return 22
        return min(self.connect_ports)

    @property
    def minram_mb(self) -> int:
        """``DataStructure.pm:get_image_minram``: max(image.minram, OS.minram)."""
        return max(self.image_minram, self.os_minram)
