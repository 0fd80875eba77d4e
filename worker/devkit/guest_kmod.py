"""Kernel modules and the initramfs archive of the test guest, without depmod or cpio on the host.

The Debian kernel package ships no ``modules.dep`` (depmod writes it at install time), so each
module's dependencies are read from its own ELF ``.modinfo`` section. The initramfs is a "newc"
cpio archive written here so device nodes need no ``mknod`` on the host.
"""

from __future__ import annotations

import lzma
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from worker.devkit.guest_debs import GuestBuildError


def module_name(path: Path) -> str:
    """``crc32c-intel.ko.xz`` -> ``crc32c_intel`` (the kernel treats - and _ alike)."""
    return path.name.split(".ko")[0].replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def elf_sections(elf: bytes) -> dict[str, bytes]:
    """Section name -> contents of an ELF64 little-endian file (all x86_64 objects are)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise GuestBuildError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    out: dict[str, bytes] = {}
    entries = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = elf[entries[shstrndx][4] : entries[shstrndx][4] + entries[shstrndx][5]]
    for name_off, sh_type, _flags, _addr, offset, size in entries:
        name = names[name_off : names.index(b"\0", name_off)].decode()
        # SHT_NOBITS (.bss) occupies no bytes in the file.
        out[name] = b"" if sh_type == 8 else elf[offset : offset + size]
    return out


def modinfo(elf: bytes) -> dict[str, str]:
    """The key=value strings of a kernel module's ``.modinfo`` section."""
    info: dict[str, str] = {}
    for item in elf_sections(elf).get(".modinfo", b"").split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, value)
    return info


def needed_libraries(elf: bytes) -> list[str]:
    """DT_NEEDED entries of a dynamically linked executable or library."""
    sections = elf_sections(elf)
    dynamic, dynstr = sections.get(".dynamic", b""), sections.get(".dynstr", b"")
    out = []
    for off in range(0, len(dynamic) - 15, 16):
        tag, val = struct.unpack_from("<qQ", dynamic, off)
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED: offset of the library name in .dynstr
            out.append(dynstr[val : dynstr.index(b"\0", val)].decode())
    return out


@dataclass
class ModuleTree:
    """The modules of one kernel version as unpacked from its package."""

    root: Path  # .../lib/modules/<version>
    files: dict[str, Path] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)

    @classmethod
    def scan(cls, root: Path) -> ModuleTree:
        tree = cls(root)
        for p in (root / "kernel").rglob("*.ko*"):
            tree.files[module_name(p)] = p
        builtin = root / "modules.builtin"
        if builtin.is_file():
            tree.builtin = {module_name(Path(line)) for line in builtin.read_text().split()}
        return tree

    def load_order(self, wanted: Iterable[str]) -> list[str]:
        """``wanted`` plus their dependencies, each after everything it needs; built-ins dropped."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            name = name.replace("-", "_")
            if name in order or name in self.builtin:
                return
            if name in visiting:
                raise GuestBuildError(f"module dependency cycle through {name}")
            path = self.files.get(name)
            if path is None:
                raise GuestBuildError(f"kernel module {name} is neither built in nor in {self.root}")
            visiting.add(name)
            for dep in modinfo(read_module(path)).get("depends", "").split(","):
                if dep:
                    visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in wanted:
            visit(name)
        return order


class Cpio:
    """A "newc" (SVR4, no CRC) cpio archive built in memory; every entry owned by root, mtime 0."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._parts.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def getvalue(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)
