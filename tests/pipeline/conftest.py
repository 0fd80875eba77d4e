"""Real-stack fixtures for the pipeline: MariaDB from vcl.sql, Redis, libvirtd, a prefork Celery worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.devkit.celery_worker import CeleryWorker
from worker.devkit.stack import Stack, StackConfig, open_stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with open_stack(StackConfig(tag="e2e"), Stack) as s:
        yield s


@pytest.fixture(scope="session")
def celery_worker_proc(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    worker = stack.start_worker(tmp_path_factory.mktemp("celery"))
    try:
        yield worker
    finally:
        worker.stop()


def lock_kv(stack: Stack) -> redis.Redis:
    """The stack's lock Redis: where the dispatcher remembers task ids, as ``vcl-worker dispatch``."""
    return redis.Redis.from_url(stack.settings.lock_redis_url)
