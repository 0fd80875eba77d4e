"""The guest's ``<cpu>``: libvirt.pm's mode and topology, and a CPU model TCG can give a guest.

libvirt.pm writes ``<cpu mode='host-model'><model fallback='allow'/>`` with its socket/core split.
Under ``type='kvm'`` that is what a guest gets here too. Under TCG (``type='qemu'``, a host without
VT-x/AMD-V) libvirt's host-model is QEMU's ``max`` CPU named after the host's CPU model with a list of
features TCG may not really provide, so the guest gets the first named model of
:data:`TCG_MODELS` that libvirt's domain capabilities list as usable under TCG: Westmere and Nehalem
are x86-64-v2 (SSE4.2, POPCNT), which current distributions (RHEL 9 and its rebuilds) require,
and ``qemu64`` (QEMU's own TCG default) is the last resort. Pure: the caller reads the capabilities.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

#: Preferred TCG models, most capable first; ``qemu64`` is taken when no other is usable or known.
TCG_MODELS: tuple[str, ...] = ("Westmere", "Nehalem", "Penryn", "Conroe", "qemu64")
TCG_FALLBACK_MODEL = "qemu64"


@dataclass(frozen=True)
class CpuSpec:
    """``<cpu>`` apart from its topology. ``mode`` None writes no mode (the hypervisor's default CPU)."""

    mode: str | None = None  # host-model | custom
    model: str | None = None  # <model> text (custom)
    fallback: str | None = None  # <model fallback=…>: allow (libvirt.pm) | forbid


#: libvirt.pm:generate_domain_xml's CPU, for ``type='kvm'``.
HOST_MODEL = CpuSpec(mode="host-model", fallback="allow")


def vcpu_topology(count: int) -> tuple[int, int, int]:
    """(sockets, cores, threads) as libvirt.pm:generate_domain_xml computes them: ``count`` sockets of
    one core up to 2 vCPUs, else 2 sockets of ``count/2`` cores; an odd count above 2 (where VCL's
    ``2 x (count-1)/2`` is one short and libvirt refuses it) is 1 socket of ``count`` cores. Always
    sockets*cores*threads == count, and never more than 2 sockets (Windows client editions use 2)."""
    count = max(int(count or 1), 1)
    if count <= 2:
        return count, 1, 1
    if count % 2:
        return 1, count, 1
    return 2, count // 2, 1


def usable_models(domain_capabilities: ET.Element) -> frozenset[str]:
    """The named models libvirt's domain capabilities mark ``usable='yes'`` (mode custom)."""
    for mode in domain_capabilities.iterfind("cpu/mode"):
        if mode.get("name") == "custom" and mode.get("supported") == "yes":
            return frozenset(
                (m.text or "").strip() for m in mode.iterfind("model") if m.get("usable") == "yes" and m.text
            )
    return frozenset()


def cpu_spec(domain_type: str, usable: frozenset[str] | None = None) -> CpuSpec:
    """The ``<cpu>`` for ``domain_type``: host-model for kvm; for qemu (TCG) the first of
    :data:`TCG_MODELS` in ``usable`` (None or empty: capabilities unknown, ``qemu64`` with fallback
    allowed); no mode for any other type (libvirt's test driver)."""
    if domain_type == "kvm":
        return HOST_MODEL
    if domain_type != "qemu":
        return CpuSpec()
    model = next((m for m in TCG_MODELS if usable and m in usable), None)
    if model is None:
        return CpuSpec(mode="custom", model=TCG_FALLBACK_MODEL, fallback="allow")
    return CpuSpec(mode="custom", model=model, fallback="forbid")


def cpu_element(parent: ET.Element, cpu: CpuSpec, count: int) -> ET.Element:
    """Append ``<cpu>`` (mode, model, :func:`vcpu_topology` of ``count``) to ``parent``."""
    el = ET.SubElement(parent, "cpu", {"mode": cpu.mode} if cpu.mode else {})
    if cpu.model or cpu.fallback:
        model = ET.SubElement(el, "model", {"fallback": cpu.fallback} if cpu.fallback else {})
        model.text = cpu.model
    sockets, cores, threads = vcpu_topology(count)
    ET.SubElement(el, "topology", {"sockets": str(sockets), "cores": str(cores), "threads": str(threads)})
    return el


__all__ = [
    "HOST_MODEL",
    "TCG_FALLBACK_MODEL",
    "TCG_MODELS",
    "CpuSpec",
    "cpu_element",
    "cpu_spec",
    "usable_models",
    "vcpu_topology",
]
