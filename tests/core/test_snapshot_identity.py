"""A restored guest's identity, on the real guest (TCG here): the SSH host key pinned at the cold
boot is checked on every later connection (another key: the load fails, nothing handed out), a
changed address makes the load boot cold, the site's post-load runs after every restore (never
baked into the snapshot), the VM generation ID changes on every restore and the guest's vmgenid
driver sees it, snapshot files never follow a planted symlink, and a transient libvirt error
during a restore keeps the snapshot."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import libvirt
import paramiko
import pytest

from tests.core.conftest import Env
from tests.faults.conftest import COUNTERS
from worker.devkit.guest_image import GuestImage
from worker.devkit.guest_master import install_guest_master
from worker.devkit.guest_network import DhcpNetwork
from worker.hypervisors import boot_snapshot, boot_snapshot_files, postload
from worker.hypervisors.boot_snapshot_files import SnapshotFiles, snapshot_files
from worker.hypervisors.domain_xml import ParsedDomain
from worker.hypervisors.errors import HostKeyMismatchError, LibvirtTransientError
from worker.hypervisors.host import get_host
from worker.hypervisors.host_keys import HostKeyMode, HostKeyPin, fingerprint
from worker.hypervisors.load import LoadResult
from worker.hypervisors.provisioner import LibvirtProvisioner
from worker.reservation import Reservation

pytestmark = [pytest.mark.real, pytest.mark.guest]
RESEED = "crng reseeded due to virtual machine fork"
MISMATCHES_REFUSED: list[str] = []  # reported by the last test of this module


def _prov(env: Env, res: Reservation, **settings: Any) -> LibvirtProvisioner:
    prov = env.guest_provisioner(res, **settings)
    prov.initialize()
    return prov


def _load(env: Env, res: Reservation, **settings: Any) -> LoadResult:
    return _prov(env, res, **settings).load()


def _pin(env: Env, res: Reservation) -> HostKeyPin:
    return HostKeyPin.for_reservation(env.settings, res, HostKeyMode.VERIFY)


def _guest(env: Env, res: Reservation, *argv: str) -> str:
    """Run ``argv`` in the guest, its host key verified against the computer's pin."""
    login = postload.login_for(res, res.computer_private_ip or "", host_keys=_pin(env, res))
    assert login is not None
    with postload.GuestShell(login) as shell:
        return shell.check(list(argv))


def _files(env: Env, res: Reservation) -> SnapshotFiles:
    return snapshot_files(
        LibvirtProvisioner(res, settings=env.settings, host=get_host("qemu:///system")).layout
    )


def _genid(name: str) -> str | None:
    guest = get_host("qemu:///system").require_guest(name)
    return ParsedDomain.parse(guest.xml()).genid


def test_genid_changes_on_every_restore_and_the_guest_sees_it(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 71)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    cold = _load(env, res)
    assert cold.boot_snapshot == "saved"
    first = _genid(cold.domain_name)
    assert first
    # The kernel's vmgenid driver is bound to QEMU's device (built into Debian's kernel: CONFIG_VMGENID=y).
    bound = _guest(env, res, "ls", "/sys/bus/acpi/drivers/vmgenid").split()
    assert any(b.startswith("QEMUVGID") for b in bound), bound
    memory = _files(env, res).memory
    saved_xml = get_host("qemu:///system").call("saved XML", lambda c: c.saveImageGetXMLDesc(memory, 0))
    saved = ParsedDomain.parse(saved_xml).genid
    assert saved
    seen = {first, saved}
    for _ in range(2):
        warm = _load(env, res)
        assert warm.boot_snapshot == "restored", warm.timings
        genid = _genid(warm.domain_name)
        assert genid is not None and genid not in seen, (genid, seen)
        seen.add(genid)
        # The guest was told: its vmgenid driver reseeded the kernel's RNG once, on this restore (the
        # snapshot was saved before any: the user's guest resumed after the save logs one of its own).
        assert _guest(env, res, "dmesg").count(RESEED) == 1
    print(f"VM generation IDs: {sorted(seen)}; guest drivers: {bound}")


def test_host_key_mismatch_is_refused(env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 72)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    assert _load(env, res).boot_snapshot == "saved"
    pin = _pin(env, res)
    record = pin.pinned()
    assert record is not None and record["address"] == res.computer_private_ip
    assert stat.S_IMODE(os.stat(pin.path).st_mode) == 0o600
    assert _prov(env, res).node_status() == "READY"
    # Another key pinned (as if the guest that answers were not the one booted).
    other = paramiko.RSAKey.generate(2048)
    forged = {
        **record,
        "key_type": other.get_name(),
        "key": other.get_base64(),
        "fingerprint": fingerprint(other),
    }
    Path(pin.path).write_text(json.dumps(forged))
    # The readiness probe refuses it: the computer needs a reload.
    assert _prov(env, res).node_status() == "RELOAD"
    MISMATCHES_REFUSED.append("node_status")
    COUNTERS["host-key mismatches refused"] += 1
    prov = _prov(env, res)
    with pytest.raises(HostKeyMismatchError, match="not the key pinned"):
        prov.load()
    MISMATCHES_REFUSED.append("restore")
    COUNTERS["host-key mismatches refused"] += 1
    # Nothing handed out: no domain, no overlay; the snapshot in doubt is gone.
    assert get_host("qemu:///system").lookup_guest(prov.layout.domain_name) is None
    assert not os.path.exists(prov.layout.cow_path)
    assert not any(os.path.exists(p) for p in _files(env, res).finals)
    # The next load boots cold and pins the key of the guest it booted (README "Boot snapshots").
    again = _load(env, res)
    assert again.boot_snapshot == "saved" and "power_on" in again.timings
    assert pin.pinned() is not None and pin.pinned()["key"] != other.get_base64()  # type: ignore[index]
    _guest(env, res, "true")
    print(f"host-key mismatches refused: {len(MISMATCHES_REFUSED)} ({MISMATCHES_REFUSED})")


def test_changed_address_boots_cold(env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 73)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    assert _load(env, res).boot_snapshot == "saved"
    made_from = json.loads(Path(_files(env, res).manifest).read_text())["made_from"]
    assert made_from["address"] == dhcp_net.host_ip(73)
    assert made_from["network"]["source"] == dhcp_net.name and made_from["network"]["uuid"]
    moved = dataclasses.replace(res, computer_private_ip=dhcp_net.host_ip(74))
    load = _load(env, moved)
    # No restore was even tried: the saved guest holds the old address.
    assert "snapshot_restore" not in load.timings and "power_on" in load.timings, load.timings
    assert load.boot_snapshot == "saved" and load.answer is not None
    assert load.answer.address == dhcp_net.host_ip(74)


def test_post_load_runs_after_every_restore(env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 75)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    hook = "tests.core.postload_marker:mark"
    assert _load(env, res, post_load=hook).boot_snapshot == "saved"
    assert _guest(env, res, "cat", "/root/postload-marks").count("reservation=") == 1
    assert _pin(env, res).pinned() is not None  # pinned by the core's own handshake before the hook
    for rid in (9001, 9002):
        again = dataclasses.replace(res, reservation_id=rid)
        warm = _load(env, again, post_load=hook)
        assert warm.boot_snapshot == "restored"
        marks = _guest(env, res, "cat", "/root/postload-marks").splitlines()
        # Only this reservation's run: the cold boot's was never baked into the snapshot.
        assert [m.split()[0] for m in marks] == [f"reservation={rid}"], marks


def test_snapshot_files_never_follow_symlinks(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 76)
    master = install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    victim = env.datastore / "victim"
    victim.write_bytes(b"precious\n")
    assert _load(env, res).boot_snapshot == "saved"
    files = _files(env, res)
    for path in files.finals:
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, (path, oct(st.st_mode))
    # A symlink planted where the restore writes its copy of the disk.
    cow_part = _prov(env, res).layout.cow_path + ".part"
    os.symlink(victim, cow_part)
    assert _load(env, res).boot_snapshot == "restored"
    assert victim.read_bytes() == b"precious\n"
    # Symlinks planted where a save writes (after its clean-up of old partial files).
    original = SnapshotFiles.remove
    planted: set[str] = set()

    def remove_then_plant(self: SnapshotFiles) -> list[str]:
        removed = original(self)  # the links of an earlier call too: each call plants anew
        for path in (self.part(self.memory), self.part(self.disk), self.part(self.manifest)):
            os.symlink(victim, path)
            planted.add(path)
        return removed

    monkeypatch.setattr(boot_snapshot_files.SnapshotFiles, "remove", remove_then_plant)
    st = os.stat(master)
    os.utime(master, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the next load boots cold, saves
    cold = _load(env, res)
    assert cold.answer is not None and "power_on" in cold.timings
    assert cold.boot_snapshot == ""  # the save refused to write through the links
    assert victim.read_bytes() == b"precious\n"
    monkeypatch.undo()
    for path in planted:
        if os.path.islink(path):
            os.unlink(path)


def test_transient_error_during_restore_keeps_the_snapshot(
    env: Env, dhcp_net: DhcpNetwork, guest_image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = env.guest_reservation(dhcp_net, guest_image, 77)
    install_guest_master(guest_image, env.images, res.imagerevision_imagename)
    assert _load(env, res).boot_snapshot == "saved"
    files = _files(env, res)
    saved_at = json.loads(Path(files.manifest).read_text())["saved_at"]

    def dropped(self: boot_snapshot.BootSnapshot, path: str, xml: str | None) -> None:
        def fail(_conn: Any) -> None:
            err = libvirt.libvirtError("connection to libvirtd dropped")
            err.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "End of file while reading data",
                       2, None, None, None, 0, 0)  # fmt: skip
            raise err

        self.host.call(f"restore {self.layout.domain_name} from {path}", fail)

    monkeypatch.setattr(boot_snapshot.BootSnapshot, "_restore_file", dropped)
    prov = _prov(env, res)
    with pytest.raises(LibvirtTransientError):
        prov.load()
    monkeypatch.undo()
    assert files.complete()
    assert json.loads(Path(files.manifest).read_text())["saved_at"] == saved_at
    assert get_host("qemu:///system").lookup_guest(prov.layout.domain_name) is None
    # The retry restores the same snapshot.
    assert _load(env, res).boot_snapshot == "restored"
