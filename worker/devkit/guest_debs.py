"""Debian packages of the test guest: resolve versions offline, fetch once, unpack without installing.

Versions come from ``apt-cache show --no-all-versions`` (what ``apt-get download`` would fetch), so the
image cache can be keyed on name, version and the archive's SHA256 without downloading anything.
``apt-cache`` costs ~0.5 s a call here, so a resolution is remembered for as long as apt's package
lists are unchanged (their names, sizes and mtimes form its fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

APT_LISTS = Path("/var/lib/apt/lists")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class GuestBuildError(RuntimeError):
    """A step of the offline image build failed (a tool missing, a package not found, bad output)."""


@dataclass(frozen=True)
class PackageRef:
    name: str
    version: str
    sha256: str
    filename: str  # basename of the pool file, used as the name in the .deb cache


def run(
    argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 600, stdin: str | None = None
) -> str:
    """Run a tool, raising :class:`GuestBuildError` with its stderr on failure."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            input=stdin or "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} is not installed (run scripts/setup-host.sh)") from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildError(f"{argv[0]} timed out after {timeout} s") from exc
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 stanzas, keeping only single-line fields (all we read)."""
    out: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            out.append(fields)
    return out


def _dep_names(fields: dict[str, str]) -> list[str]:
    """First alternative of each Depends/Pre-Depends entry, without version or arch qualifiers."""
    names: list[str] = []
    for key in ("Pre-Depends", "Depends"):
        for entry in fields.get(key, "").split(","):
            first = entry.split("|")[0].strip()
            if first:
                names.append(first.split()[0].split(":")[0])
    return names


def _wanted_dep(name: str) -> bool:
    # Only shared libraries and the versioned kernel the metapackage points at are guest files;
    # data-only packages such as gcc-12-base add nothing a binary needs at run time.
    return name.startswith(("lib", "zlib", "linux-image-")) and not name.endswith(("-dev", "-doc"))


def resolve(roots: Iterable[str]) -> list[PackageRef]:
    """The candidate versions of ``roots`` and, recursively, of their library dependencies."""
    found: dict[str, dict[str, str]] = {}
    pending = sorted(set(roots))
    while pending:
        text = run(["apt-cache", "show", "--no-all-versions", *pending], timeout=120)
        got = {f["Package"]: f for f in _stanzas(text)}
        missing = [p for p in pending if p not in got]
        if missing:
            raise GuestBuildError(f"apt-cache knows no {missing} (run apt-get update)")
        found.update(got)
        pending = sorted(
            {d for f in got.values() for d in _dep_names(f) if _wanted_dep(d) and d not in found}
        )
    refs = []
    for name, f in sorted(found.items()):
        if "Filename" not in f or "SHA256" not in f:
            raise GuestBuildError(f"apt-cache show {name}: no Filename/SHA256")
        refs.append(PackageRef(name, f["Version"], f["SHA256"], os.path.basename(f["Filename"])))
    return refs


def lists_fingerprint() -> str:
    """Changes whenever ``apt-get update`` or a sources edit could change a resolution."""
    h = hashlib.sha256()
    paths: list[Path] = []
    for base in (APT_LISTS, *APT_SOURCES):
        if base.is_dir():
            paths.extend(p for p in base.iterdir() if p.is_file() and p.name != "lock")
        elif base.is_file():
            paths.append(base)
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def resolve_cached(roots: Sequence[str], memo: Path) -> list[PackageRef]:
    """:func:`resolve`, remembered in ``memo`` (JSON) while the apt lists and this resolver are unchanged."""
    resolver = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([lists_fingerprint(), sorted(roots), resolver]).encode()).hexdigest()
    try:
        data = json.loads(memo.read_text())
        if data.get("key") == key:
            return [PackageRef(**r) for r in data["refs"]]
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent or unreadable memo: resolve again
    refs = resolve(roots)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "refs": [asdict(r) for r in refs]}))
    os.replace(tmp, memo)
    return refs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(refs: Sequence[PackageRef], deb_dir: Path) -> dict[str, Path]:
    """Each package's .deb in ``deb_dir``, downloaded only when absent; hashes are verified."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    out = {r.name: deb_dir / r.filename for r in refs}
    todo = [r for r in refs if not out[r.name].is_file()]
    if todo:
        with tempfile.TemporaryDirectory(dir=deb_dir, prefix=".dl-") as tmp:
            # The _apt sandbox user must be able to write the download directory.
            os.chmod(tmp, 0o777)  # noqa: S103 (a private temp dir, removed after)
            run(["apt-get", "download", "-q", *(f"{r.name}={r.version}" for r in todo)], cwd=Path(tmp))
            for r in todo:
                got = list(Path(tmp).glob(f"{r.name}_*.deb"))
                if len(got) != 1:
                    raise GuestBuildError(f"apt-get download left {got} for {r.name}")
                if _sha256_file(got[0]) != r.sha256:
                    raise GuestBuildError(f"{got[0].name}: SHA256 differs from the archive's")
                os.replace(got[0], out[r.name])
    for r in refs:
        if r not in todo and _sha256_file(out[r.name]) != r.sha256:
            out[r.name].unlink()  # a corrupt cached file: drop it so the next build fetches again
            raise GuestBuildError(f"cached {r.filename} is corrupt; removed, build again")
    return out


def unpack(deb: Path, dest: Path) -> None:
    """Unpack the package's files (no maintainer scripts, nothing registered with dpkg)."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])


def prune(root: Path, relpaths: Iterable[str]) -> None:
    """Remove documentation and data the guest never reads (keeps the image small)."""
    for rel in relpaths:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
