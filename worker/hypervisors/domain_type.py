"""Choose ``<domain type>``: ``kvm`` only where the host's KVM runs an unmodified guest, else ``qemu``.

``/dev/kvm`` alone proves little: a paravirtual KVM (``kvm_pvm``) also provides it, but unmodified
guests barely run under it (GRUB takes ~50 s, a kernel prints nothing for minutes, ``-cpu host``
aborts) while libvirt reports them ``running``. So ``kvm`` needs hardware virtualisation in the CPU
flags (vmx/svm) *and* the matching hardware module (kvm_intel/kvm_amd) loaded, *and* no kvm_pvm.
Pure: the paths and libvirt's answer are arguments, so tests use fake trees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.hypervisors.errors import InvalidInputError

KVM = "kvm"
QEMU = "qemu"
_TYPES = (KVM, QEMU)
# CPU flag -> the module that drives it.
_HW = {"vmx": "kvm_intel", "svm": "kvm_amd"}


@dataclass(frozen=True)
class DomainTypeChoice:
    domain_type: str  # "kvm" or "qemu"
    reason: str  # one human sentence; the caller logs it once


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return flags


def choose_domain_type(
    override: str | None = None,
    *,
    libvirt_offers: Callable[[str], bool] = lambda _t: True,
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
) -> DomainTypeChoice:
    """Decide the domain type; ``override`` (VCL_DOMAIN_TYPE: kvm|qemu) wins when given.

    ``libvirt_offers(type)`` says whether the host's libvirt capabilities list that domain type.
    """
    if override:
        wanted = override.strip().lower()
        if wanted not in _TYPES:
            raise InvalidInputError(f"VCL_DOMAIN_TYPE must be kvm or qemu, not {override!r}")
        return DomainTypeChoice(wanted, f"VCL_DOMAIN_TYPE={wanted} (set by configuration)")
    if (sys_module / "kvm_pvm").exists():
        return DomainTypeChoice(
            QEMU, "kvm_pvm is loaded: paravirtual KVM cannot run unmodified guests, using TCG (qemu)"
        )
    flags = _cpu_flags(cpuinfo)
    hw = sorted(flag for flag in _HW if flag in flags)
    if not hw:
        return DomainTypeChoice(QEMU, "the CPU has no vmx/svm flag: no hardware virtualisation, using TCG")
    modules = [_HW[flag] for flag in hw if (sys_module / _HW[flag]).exists()]
    if not modules:
        wanted_mods = "/".join(_HW[f] for f in hw)
        return DomainTypeChoice(QEMU, f"CPU has {'/'.join(hw)} but {wanted_mods} is not loaded, using TCG")
    if not dev_kvm.exists():
        return DomainTypeChoice(QEMU, f"{modules[0]} is loaded but {dev_kvm} is missing, using TCG")
    if not libvirt_offers(KVM):
        return DomainTypeChoice(QEMU, "libvirt does not offer domain type kvm, using TCG")
    return DomainTypeChoice(KVM, f"hardware KVM: CPU flag {hw[0]}, module {modules[0]} loaded")
