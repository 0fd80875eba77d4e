"""The ``vcl.sql`` seed rows the flows need (a subset, with vcl.sql's ids), for the SQLite demo.
On MariaDB/MySQL these rows come from ``vcl.sql`` itself."""

from __future__ import annotations

from worker.db.requests import VCL_STATES

#: ``state`` rows (shared with the scheduler's state-name lists).
STATES: tuple[tuple[int, str], ...] = VCL_STATES

#: In vcl.sql order (ids are auto-assigned there, so they come out 1..56 in this order too).
LOADSTATES: tuple[tuple[str, str, int | None], ...] = (
    ("info", "info", 2), ("loadimageblade", "must reload computer", 0),
    ("loadimagevmware", "loadimagevmware", 1), ("statuscheck", "computer status check", 10),
    ("assign2project", "changing VLAN setting ", 0), ("rinstall", "starting install process", 1),
    ("dynamicDHCPaddress", "detecting dynamic IP address", 2),
    ("staticIPaddress", "setting static IP address", 2),
    ("loadimagecomplete", "running post configuration", 0),
    ("loadimagefailed", "preparing computer failed", 2), ("failed", "reservation failed", 2),
    ("bootstate", "image loading", 175),
    ("editnodetype", "edit config file to load requested image", 1),
    ("xcatstage1", "detected dhcp request from node", 2),
    ("xcatstage2", "rebooting node for reinstall", 100), ("WARNING", "WARNING", 2),
    ("xcatREADY", "computer reported READY starting post configs", 2),
    ("reserved", "ready for Connect", 0),
    ("xcatstage3", "node starting to received install instructions", 93),
    ("xcatstage4", "node received install instructions", 0),
    ("xcatstage5", "starting reload process", 27),
    ("doesimageexists", "confirming image exists locally", 4), ("vmround1", "vmround1", 1),
    ("vmround2", "vmround2", 186), ("transfervm", "transferring image files to host server", 255),
    ("vmsetupconfig", "creating configuration file", 2),
    ("vmstage1", "detected stage 1 of 5 loading process", 22),
    ("vmstage2", "detected stage 2 of 5 loading process", 120),
    ("vmstage3", "detected stage 3 of 4 loading process", 0),
    ("xcatround2", "waiting for image loading to complete", 0),
    ("xcatround3", "loaded - start post configuration", 0), ("xcatround1", "xcatround1", 2),
    ("timeout", "timeout", 2), ("vmwareready", "machine online", 3),
    ("startload", "starting load process", 6), ("addinguser", "adding user account", 18),
    ("connected", "detected user connection", 2), ("nodeready", "resource ready", 0),
    ("inuseend10", "10 minute warning ", 2), ("inuseend5", "5 minute warning", 2),
    ("machinebooted", "machine booting", 68), ("checklabstatus", "checking computer status", 2),
    ("startvm", "starting virtual machine", 3),
    ("vmstage5", "detected stage 5 of 5 loading process", 1),
    ("vmconfigcopy", "copying vm config file", None), ("imageloadcomplete", "node ready to add user", 0),
    ("repeat", "repeat", 0), ("deleted", "deleted", None),
    ("begin", "beginning to process reservation", 0), ("exited", "vcld process exited", 0),
    ("acknowledgetimeout", "start acknowledge timeout", 0),
    ("noinitialconnection", "initial user connection not detected", 0),
    ("initialconnecttimeout", "initial user connection timeout", 0),
    ("reconnecttimeout", "user reconnection timeout", 0),
    ("copyfrompartnerMN", "copy image from partner management node", 0),
    ("postreserve", "post reserve completed", 0),
)  # fmt: skip

MODULES: tuple[tuple[int, str, str, str], ...] = (
    (1, "provisioning_xcat", "xCAT Provisioning Module", "VCL::Module::Provisioning::xCAT"),
    (3, "provisioning_lab", "Computing Lab Provisioning Module", "VCL::Module::Provisioning::Lab"),
    (5, "os_linux", "Linux OS Module", "VCL::Module::OS::Linux"),
    (8, "predictive_level_0", "Reload with last image", "VCL::Module::Predictive::Level_0"),
    (9, "predictive_level_1", "Reload image based on recent user demand", "VCL::Module::Predictive::Level_1"),
    (14, "os_linux_ubuntu", "Ubuntu Linux OS Module", "VCL::Module::OS::Linux::Ubuntu"),
    (15, "os_unix_lab", "Unix Lab OS Module", "VCL::Module::OS::Linux::UnixLab"),
    (21, "provisioning_vmware", "VMware Provisioning Module", "VCL::Module::Provisioning::VMware::VMware"),
    (23, "base_module", "VCL Base Module", "VCL::Module"),
    (24, "provisioning_vbox", "Virtual Box Provisioning Module", "VCL::Module::Provisioning::vbox"),
    (27, "provisioning_libvirt", "Libvirt Provisioning Module", "VCL::Module::Provisioning::libvirt"),
    (31, "predictive_level_2", "Unload/power off after reservation", "VCL::Module::Predictive::Level_2"),
    (32, "provisioning_openstack", "OpenStack Provisioning Module", "VCL::Module::Provisioning::openstack"),
    (33, "provisioning_one", "OpenNebula Provisioning Module", "VCL::Module::Provisioning::one"),
)  # fmt: skip

PROVISIONING: tuple[tuple[int, str, str, int], ...] = (
    (1, "xcat", "xCAT", 1), (3, "lab", "Computing Lab", 3), (7, "vmware", "VMware", 21),
    (8, "vbox", "Virtual Box", 24), (9, "libvirt", "Libvirt Virtualization API", 27),
    (10, "none", "None", 23), (11, "openstack", "openstack", 32), (12, "one", "OpenNebula", 33),
)  # fmt: skip

IMAGETYPES: tuple[tuple[int, str], ...] = (
    (1, "none"), (2, "partimage"), (3, "partimage-ng"), (4, "lab"), (5, "kickstart"), (6, "vmdk"),
    (7, "qcow2"), (8, "vdi"),
)  # fmt: skip
OSTYPES: tuple[tuple[int, str], ...] = ((1, "windows"), (2, "linux"), (3, "unix"), (4, "osx"))
OSINSTALLTYPES: tuple[tuple[int, str], ...] = (
    (1, "partimage"), (2, "kickstart"), (3, "none"), (4, "vmware"), (5, "vbox"), (6, "openstack"),
)  # fmt: skip
#: (id, name, prettyname, type, installtype, minram, sourcepath, moduleid) after vcl.sql's UPDATEs.
OSES: tuple[tuple[int, str, str, str, str, int, str | None, int], ...] = (
    (2, "sun4x_58", "Solaris 5.8 (Lab)", "unix", "none", 512, None, 15),
    (36, "vmwarelinux", "Generic Linux (VMware)", "linux", "vmware", 512, "vmware_images", 5),
    (44, "vmwareubuntu", "Ubuntu (VMware)", "linux", "vmware", 512, "vmware_images", 14),
)
PLATFORMS: tuple[tuple[int, str], ...] = ((1, "i386"), (3, "ultrasparc"), (4, "i386_lab"))
RESOURCETYPES: tuple[tuple[int, str], ...] = (
    (12, "computer"), (13, "image"), (15, "schedule"), (16, "managementnode"), (17, "serverprofile"),
    (18, "addomain"),
)  # fmt: skip
VARIABLES: tuple[tuple[str, str], ...] = (
    ("schema-version", "1"), ("acknowledgetimeout", "900"), ("initialconnecttimeout", "900"),
    ("reconnecttimeout", "900"), ("general_inuse_check", "300"), ("server_inuse_check", "900"),
    ("general_end_notice_first", "600"), ("general_end_notice_second", "300"),
    ("ignore_connections_gte", "1440"),
)  # fmt: skip
KVM_PROFILE_NAME = "KVM - local storage"
LIBVIRT_PROVISIONING_ID = 9
NONE_PROVISIONING_ID = 10
