"""VCL's naming and path rules (libvirt.pm section 1.2), as pure functions, plus input validation.

Every name that ends up in a file path or in libvirt XML comes from the VCL database, so it is validated
here before any file or domain is touched (:class:`InvalidInputError` naming the bad value).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence

from worker.hypervisors.errors import InvalidInputError
from worker.hypervisors.roots import inside, is_under

DOMAIN_NAME_MAX_LENGTH = 48

# Files that never count as a master image (VCL drops *.xml and *.reference; we also drop our own
# temporary/partial files and lock files so a half-written copy is never mistaken for a master).
_MASTER_EXCLUDED_SUFFIXES = (".xml", ".reference", ".part", ".lock")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.IGNORECASE)
_BAD_NAME_CHARS = {
    "/": "a slash",
    "\\": "a backslash",
    "'": "a quote",
    '"': "a quote",
    "`": "a backquote",
    "<": "'<'",
    ">": "'>'",
    "&": "'&'",
    "*": "a wildcard",
    "?": "a wildcard",
    "[": "a wildcard",
    "$": "'$'",
    ";": "';'",
    "|": "'|'",
}


# --------------------------------------------------------------------------- validation


def validate_name(value: str, what: str = "image name") -> str:
    """Reject names that could escape a directory, break XML or a shell: returns ``value`` unchanged."""
    if not isinstance(value, str) or value == "":
        raise InvalidInputError(f"invalid {what} {value!r}: empty")
    if ".." in value:
        raise InvalidInputError(f"invalid {what} {value!r}: contains '..'")
    if value.startswith(("-", ".")):
        raise InvalidInputError(f"invalid {what} {value!r}: must not start with '-' or '.'")
    for ch in value:
        if ch in _BAD_NAME_CHARS:
            raise InvalidInputError(f"invalid {what} {value!r}: contains {_BAD_NAME_CHARS[ch]}")
        if ch.isspace():
            raise InvalidInputError(f"invalid {what} {value!r}: contains whitespace")
        if ord(ch) < 32 or ord(ch) == 127:
            raise InvalidInputError(f"invalid {what} {value!r}: contains a control character")
    if len(value) > 200:
        raise InvalidInputError(f"invalid {what} {value!r}: longer than 200 characters")
    return value


def validate_path(value: str, what: str = "path") -> str:
    """Absolute, no ``..`` component, no control characters or quotes. Returns the normalised path."""
    if not isinstance(value, str) or value.strip() == "":
        raise InvalidInputError(f"invalid {what} {value!r}: empty")
    if not value.startswith("/"):
        raise InvalidInputError(f"invalid {what} {value!r}: not an absolute path")
    if any(part == ".." for part in value.split("/")):
        raise InvalidInputError(f"invalid {what} {value!r}: contains '..'")
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127:
            raise InvalidInputError(f"invalid {what} {value!r}: contains a control character")
        if ch in "'\"`<>&":
            raise InvalidInputError(f"invalid {what} {value!r}: contains {ch!r}")
    return os.path.normpath(value)


def normalize_mac(value: str, what: str = "MAC address") -> str:
    """``aa:bb:cc:dd:ee:ff`` (lowercase); accepts ``-`` separators; rejects multicast addresses."""
    if not isinstance(value, str) or not _MAC_RE.match(value.strip()):
        raise InvalidInputError(f"invalid {what} {value!r}: expected six hex octets like 52:54:00:12:34:56")
    mac = value.strip().lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise InvalidInputError(f"invalid {what} {value!r}: multicast address (first octet is odd)")
    return mac


# --------------------------------------------------------------------------- VCL names


def reduce_prettyname(prettyname: str) -> str:
    """``[^a-z0-9]`` removed, case-insensitive (get_domain_name)."""
    return re.sub(r"[^a-z0-9]", "", prettyname, flags=re.IGNORECASE)


def domain_name(
    computer_short_name: str,
    computer_id: int,
    image_prettyname: str,
    image_id: int,
    revision: int,
    *,
    max_length: int = DOMAIN_NAME_MAX_LENGTH,
) -> str:
    """``libvirt.pm:get_domain_name`` for states other than image/checkpoint, with the 48-char rule."""
    if len(computer_short_name) > max_length:
        return str(computer_id)
    prefix = f"{computer_short_name}_"
    suffix = f"{image_id}-v{revision}"
    base_length = len(prefix) + len(suffix)
    if base_length > max_length:
        return computer_short_name
    if base_length == max_length:
        return prefix + suffix
    middle_max = max_length - base_length - 1
    if middle_max < 5:
        return prefix + suffix
    middle = reduce_prettyname(image_prettyname)[:middle_max]
    return f"{prefix}{middle}_{suffix}"


def domain_file_base_name(computer_short_name: str, image_id: int, revision: int) -> str:
    """``get_domain_file_base_name``: ``<short>_<imageid>-v<rev>``."""
    return f"{computer_short_name}_{image_id}-v{revision}"


def copy_on_write_file_path(vm_path: str, file_base_name: str, datastore_imagetype: str) -> str:
    """``get_copy_on_write_file_path``: ``<vmpath>/<base>.<datastore imagetype>``."""
    return os.path.join(vm_path, f"{file_base_name}.{datastore_imagetype}")


#: ``image.name`` / ``imagerevision.imagename`` are varchar(70) in vcl.sql.
MAX_IMAGE_NAME = 70


def new_image_name(os_name: str, image_prettyname: str, image_id: int, revision: int) -> str:
    """``get_new_image_name``: ``<OS.name minus vmware/image>-<prettyname minus [\\W_]>-<id>-v<rev>``."""
    os_part = re.sub(r"vmware|image", "", os_name)
    pretty = re.sub(r"[\W_]", "", image_prettyname)
    # image.name holds 70 characters and VCL's prettyname up to 80: the pretty part is shortened so
    # the name always fits (vcld would fail the capture's UPDATE after deleting the user's domain).
    fixed = len(f"{os_part}--{image_id}-v{revision}")
    return f"{os_part}-{pretty[: max(1, MAX_IMAGE_NAME - fixed)]}-{image_id}-v{revision}"


def is_computer_domain(domain: str, computer_short_name: str) -> bool:
    """Domain names ``<short>_…`` or ``<short>:…`` (delete_existing_domains)."""
    return domain.startswith((f"{computer_short_name}_", f"{computer_short_name}:"))


def is_computer_disk(path: str, computer_short_name: str, roots: Sequence[str] | None = None) -> bool:
    """Outside the image state only disks whose base name starts with ``<short>_`` are deleted, and
    (when ``roots`` are given, resolved) only those that resolve under one of the allowed roots."""
    if not os.path.basename(path).startswith(f"{computer_short_name}_"):
        return False
    return roots is None or any(is_under(os.path.realpath(path), r) for r in roots)


# --------------------------------------------------------------------------- paths


def _walk_files(root: str) -> Iterable[str]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield os.path.join(dirpath, f)


def find_master_candidates(datastore_path: str, image_name: str) -> list[str]:
    """``find "<datastore>/" -iname "<image name>.*" -type f`` minus *.xml / *.reference (and .part)."""
    if not os.path.isdir(datastore_path):
        return []
    pattern = f"{image_name}.*".lower()
    out = []
    for path in _walk_files(datastore_path):
        base = os.path.basename(path).lower()
        if not fnmatch.fnmatchcase(base, pattern):
            continue
        if base.endswith(_MASTER_EXCLUDED_SUFFIXES):
            continue
        # a symlink in the datastore must not turn a host file into this image's master
        inside(path, datastore_path, f"master candidate of {image_name!r}")
        if os.path.isfile(path):
            out.append(path)
    return sorted(out)


def master_image_file_path(datastore_path: str, image_name: str, datastore_imagetype: str) -> str:
    """``get_master_image_file_path``: a unique recursive case-insensitive match, else the built path."""
    candidates = find_master_candidates(datastore_path, image_name)
    if len(candidates) == 1:
        return candidates[0]
    return os.path.join(datastore_path, f"{image_name}.{datastore_imagetype}")


def master_xml_file_path(datastore_path: str, image_name: str) -> str:
    return os.path.join(datastore_path, f"{image_name}.xml")


def repository_image_directory_path(repository_path: str | None, image_name: str) -> str | None:
    if not repository_path:
        return None
    return os.path.join(repository_path, image_name)


def repository_image_file_path(
    repository_path: str | None, image_name: str, repository_imagetype: str
) -> str | None:
    d = repository_image_directory_path(repository_path, image_name)
    return None if d is None else os.path.join(d, f"{image_name}.{repository_imagetype}")


def repository_xml_file_path(repository_path: str | None, image_name: str) -> str | None:
    d = repository_image_directory_path(repository_path, image_name)
    return None if d is None else os.path.join(d, f"{image_name}.xml")


def repository_file_re(image_name: str) -> re.Pattern[str]:
    """The names a repository file of ``image_name`` may have: ``<name>.<ext>``, or for vmdk a split
    extent ``<name>-s001.vmdk`` / ``<name>-f001.vmdk`` / ``<name>-flat.vmdk`` (case-insensitive).

    VCL matches ``<name>*.*``, a prefix: ``img-v1`` then also finds ``img-v10.qcow2`` and qemu-img
    joins both into one permanent master. Nothing may follow the name but an extension or a vmdk
    extent suffix, and both start with a character no revision number can continue with.
    """
    return re.compile(
        rf"^{re.escape(image_name)}(?:\.[a-z0-9]+|(?:-[sf]\d{{3}}|-flat)\.vmdk)$", re.IGNORECASE
    )


def find_repository_image_file_paths(repository_path: str | None, image_name: str) -> list[str]:
    """``find "<repo>/" -iname "<name>.*"`` (plus split-vmdk extents) with VCL's filters.

    Only :func:`repository_file_re` names count (never a prefix match: ``-v1`` is not ``-v10``).
    Drops paths containing ``.vmx``, ``.txt`` or ``.xml`` anywhere, our own ``.part`` files, and,
    when more than one file remains and the first (sorted) is a ``.vmdk``, the split-vmdk descriptor
    ``<name>.vmdk``. A file that resolves outside the repository (a symlink) is refused.
    """
    if not repository_path or not os.path.isdir(repository_path):
        return []
    wanted = repository_file_re(image_name)
    found = []
    for path in _walk_files(repository_path):
        base = os.path.basename(path)
        if not wanted.match(base) or base.lower().endswith(_MASTER_EXCLUDED_SUFFIXES):
            continue
        if re.search(r"\.(vmx|txt|xml)", path, re.IGNORECASE):
            continue
        inside(path, repository_path, f"repository file of {image_name!r}")
        found.append(path)
    found.sort()
    if len(found) > 1 and found[0].lower().endswith(".vmdk"):
        found = [p for p in found if os.path.basename(p) != f"{image_name}.vmdk"]
    return found


__all__ = [
    "DOMAIN_NAME_MAX_LENGTH",
    "copy_on_write_file_path",
    "domain_file_base_name",
    "domain_name",
    "find_master_candidates",
    "find_repository_image_file_paths",
    "is_computer_disk",
    "is_computer_domain",
    "master_image_file_path",
    "master_xml_file_path",
    "new_image_name",
    "normalize_mac",
    "reduce_prettyname",
    "repository_file_re",
    "repository_image_directory_path",
    "repository_image_file_path",
    "repository_xml_file_path",
    "validate_name",
    "validate_path",
]
