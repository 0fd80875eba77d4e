"""The benchmarks' stack: the shared real stack (worker.devkit.stack) with 24 computers, Redis DBs
14/15, a repository holding the 1 GiB master, and one prefork worker whose concurrency B2 sweeps."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.images import make_master
from worker.devkit.libvirt_env import cleanup_domains, list_domain_names
from worker.devkit.stack import Stack, StackConfig, open_stack

RESULTS = Path(__file__).resolve().parent / "results"
N_COMPUTERS = 24
REPO_IMAGE_MIB = 1024


@dataclass(kw_only=True)
class BenchStack(Stack):
    worker: CeleryWorker | None = None

    @property
    def repo_image(self) -> Path:
        assert self.repository is not None
        return self.repository / self.site.imagename / f"{self.site.imagename}.qcow2"

    @property
    def vm_prefix(self) -> str:
        """Every computer's short name (and so its domains and overlays) starts with it."""
        return f"{self.prefix}v"

    @property
    def raw_prefix(self) -> str:
        """The raw baselines' domains and overlays."""
        return f"{self.prefix}raw_"

    def make_images(self) -> None:
        """The repository copy (1 GiB qcow2, all data) and a datastore master copied from it."""
        make_master(self.repo_image, size_mb=REPO_IMAGE_MIB, pattern=0x5A, data_mb=REPO_IMAGE_MIB)
        self.restore_master()

    def restore_master(self) -> None:
        if not self.master.exists():
            shutil.copyfile(self.repo_image, self.master)
            self.master.chmod(0o444)

    def remove_master(self) -> None:
        self.master.unlink(missing_ok=True)

    def set_repository(self, enabled: bool) -> None:
        self.execute(
            "UPDATE vmprofile SET repositorypath = :p WHERE id = :id",
            p=str(self.repository) if enabled else None,
            id=self.site.vmprofile_id,
        )

    def use_worker(self, concurrency: int) -> CeleryWorker:
        """The benchmark worker at ``concurrency`` (restarted only when that changes)."""
        if self.worker is not None and self.worker.concurrency == concurrency:
            return self.worker
        self.stop_worker()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.worker = self.start_worker(RESULTS, concurrency=concurrency, loglevel="WARNING")
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def reset_all(self) -> None:
        """No domain and no overlay of any computer (untimed cleanup between repeats)."""
        cleanup_domains(self.vm_prefix, wait=120)
        for p in self.datastore.glob(f"{self.vm_prefix}*"):
            p.unlink(missing_ok=True)

    def running_domains(self, prefix: str) -> list[str]:
        return list_domain_names(prefix, self.settings.libvirt_uri, running_only=True, wait=120)


@contextlib.contextmanager
def bench_stack() -> Iterator[BenchStack]:
    config = StackConfig(
        tag="bench",
        vms=N_COMPUTERS,
        # The tests use DBs 11-13: broker 14, results and locks 15.
        redis_dbs=(14, 15, 15),
        repository=True,
        master=False,  # made by make_images: a copy of the 1 GiB repository image
        # No-OS guests never answer ACPI: destroy them after 1 s, not 60 s.
        shutdown_timeout=1,
        lock_wait=600,
        env={"VCL_LOG_LEVEL": "WARNING"},
        site={"image_minram": 512},
    )
    with open_stack(config, BenchStack) as stack:
        yield stack
