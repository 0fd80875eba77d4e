"""The real guests the devkit builds, by name: ``tiny`` (busybox + dropbear, seconds to boot) and
``debian`` (Debian 12 with systemd and OpenSSH, built with mmdebstrap). Stacks, bench and the demo
pick one by this name."""

from __future__ import annotations

from worker.devkit.debian_image import ensure_debian_image
from worker.devkit.guest_image import GuestImage, ensure_guest_image

GUEST_NAMES = ("tiny", "debian")


def ensure_named_guest(name: str) -> GuestImage:
    """The built (or cached) image of guest ``name``; ValueError naming the choices otherwise."""
    if name == "debian":
        return ensure_debian_image()
    if name == "tiny":
        return ensure_guest_image()
    raise ValueError(f"guest {name!r}: use one of {', '.join(GUEST_NAMES)}")


__all__ = ["GUEST_NAMES", "ensure_named_guest"]
