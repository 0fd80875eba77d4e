"""Install the built test guest as a VCL master image in a datastore.

A VCL master is ``<datastore>/<imagerevision.imagename>.qcow2`` (read-only) with, optionally, the
domain XML saved at capture time beside it (``<imagename>.xml``); vcld's libvirt module takes the disk
bus and NIC model from that XML. The guest's initramfs has virtio drivers, so its XML says virtio.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from worker.devkit.guest_image import GuestImage


def master_xml(disk_bus: str = "virtio", nic_model: str = "virtio") -> str:
    root = ET.Element("domain", {"type": "qemu"})
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": disk_bus})
    iface = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(iface, "model", {"type": nic_model})
    return ET.tostring(root, encoding="unicode")


def install_guest_master(image: GuestImage, datastore: Path, imagename: str, mode: int = 0o444) -> Path:
    """Copy the guest to ``<datastore>/<imagename>.qcow2`` (+ its XML); the master's path."""
    datastore.mkdir(parents=True, exist_ok=True)
    target = datastore / f"{imagename}.qcow2"
    tmp = target.with_suffix(".qcow2.part")
    shutil.copyfile(image.path, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, target)
    (datastore / f"{imagename}.xml").write_text(master_xml())
    return target
