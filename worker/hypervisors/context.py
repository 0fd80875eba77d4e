"""What one load or capture of one reservation works with, passed around as one value.

:class:`~worker.hypervisors.provisioner.LibvirtProvisioner` builds an :class:`OperationContext` for
each ``load()``/``capture()`` call; the steps in :mod:`.load`, :mod:`.boot_snapshot`,
:mod:`.guest_access` and :mod:`.capture` take it instead of six loose arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.config import Settings
from worker.hypervisors.drivers.base import Driver
from worker.hypervisors.host import LibvirtHost
from worker.hypervisors.layout import Layout
from worker.hypervisors.progress import Progress
from worker.reservation import Reservation
from worker.timing import Stopwatch


@dataclass(frozen=True)
class OperationContext:
    """Frozen: a step that needs other settings (a restored guest's shorter readiness budget) uses a
    ``dataclasses.replace`` copy; the stopwatch is shared by the copies, so every step's timing lands
    in the one result."""

    host: LibvirtHost
    driver: Driver
    layout: Layout
    settings: Settings
    progress: Progress = field(default_factory=Progress)
    # Step timings of the result; started when the context is built, i.e. when the operation starts.
    stopwatch: Stopwatch = field(default_factory=Stopwatch)

    @property
    def reservation(self) -> Reservation:
        return self.layout.reservation


__all__ = ["OperationContext"]
