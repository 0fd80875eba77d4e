"""domain_type.choose_domain_type on fake /proc/cpuinfo and /sys/module trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.hypervisors.domain_type import choose_domain_type
from worker.hypervisors.errors import InvalidInputError

pytestmark = pytest.mark.guest


def fake_host(tmp_path: Path, flags: str, modules: list[str], dev_kvm: bool = True) -> dict[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    sys_module = tmp_path / "module"
    for m in ["kvm", *modules]:
        (sys_module / m).mkdir(parents=True)
    dev = tmp_path / "kvm"
    if dev_kvm:
        dev.touch()
    return {"cpuinfo": cpuinfo, "sys_module": sys_module, "dev_kvm": dev}


def test_kvm_pvm_means_qemu(tmp_path: Path) -> None:
    choice = choose_domain_type(**fake_host(tmp_path, "vmx", ["kvm_pvm", "kvm_intel"]))
    assert choice.domain_type == "qemu" and "kvm_pvm" in choice.reason


def test_vmx_and_kvm_intel_means_kvm(tmp_path: Path) -> None:
    choice = choose_domain_type(**fake_host(tmp_path, "vmx", ["kvm_intel"]))
    assert choice.domain_type == "kvm" and "kvm_intel" in choice.reason


def test_svm_and_kvm_amd_means_kvm(tmp_path: Path) -> None:
    assert choose_domain_type(**fake_host(tmp_path, "svm", ["kvm_amd"])).domain_type == "kvm"


@pytest.mark.parametrize(
    ("flags", "modules", "dev_kvm", "offers", "why"),
    [
        ("", ["kvm_intel"], True, True, "vmx/svm"),
        ("vmx", [], True, True, "not loaded"),
        ("vmx", ["kvm_amd"], True, True, "not loaded"),
        ("vmx", ["kvm_intel"], False, True, "missing"),
        ("vmx", ["kvm_intel"], True, False, "libvirt"),
    ],
)
def test_otherwise_qemu(
    tmp_path: Path, flags: str, modules: list[str], dev_kvm: bool, offers: bool, why: str
) -> None:
    choice = choose_domain_type(
        libvirt_offers=lambda _t: offers, **fake_host(tmp_path, flags, modules, dev_kvm)
    )
    assert choice.domain_type == "qemu" and why in choice.reason


def test_override_wins(tmp_path: Path) -> None:
    pvm = fake_host(tmp_path / "a", "", ["kvm_pvm"])
    assert choose_domain_type("kvm", **pvm).domain_type == "kvm"
    hw = fake_host(tmp_path / "b", "vmx", ["kvm_intel"])
    choice = choose_domain_type(" QEMU ", **hw)
    assert choice.domain_type == "qemu" and "VCL_DOMAIN_TYPE" in choice.reason
    with pytest.raises(InvalidInputError):
        choose_domain_type("xen", **hw)


def test_missing_cpuinfo_is_qemu(tmp_path: Path) -> None:
    paths = fake_host(tmp_path, "vmx", ["kvm_intel"])
    paths["cpuinfo"] = tmp_path / "absent"
    assert choose_domain_type(**paths).domain_type == "qemu"


def test_this_host() -> None:
    """Here /dev/kvm is kvm_pvm: the real answer must be qemu (TCG)."""
    if not Path("/sys/module/kvm_pvm").exists():
        pytest.skip("not a kvm_pvm host")
    assert choose_domain_type().domain_type == "qemu"
