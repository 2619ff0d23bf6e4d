"""Small helpers shared by integration tests (real Redis / PostgreSQL only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from redis.asyncio import Redis

from shared.db.jobs import Job, JobSpec
from shared.keys import Keys
from shared.lifecycle import Lifecycle
from shared.membership import Lease, Membership
from shared.settings import Settings
from shared.wiring import Wiring


async def add_worker(
    membership: Membership, worker_id: str, *, cpus: int, memory_mb: int,
    ttl_ms: int = 60_000, hostname: str = "test-host", labels: dict[str, str] | None = None,
) -> Lease:
    """Register and announce a worker through the real scripts (heartbeat, then join)."""
    incarnation = f"inc-{worker_id}"
    await membership.heartbeat(worker_id=worker_id, incarnation=incarnation, hostname=hostname,
                               cpus=cpus, memory_mb=memory_mb, labels=labels or {},
                               ttl_ms=ttl_ms,
                               now_ms=int(time.time() * 1000))
    lease = Lease(worker_id=worker_id, incarnation=incarnation, hostname=hostname, cpus=cpus,
                  memory_mb=memory_mb, labels=labels or {})
    status, _ = await membership.join(lease, now_ms=int(time.time() * 1000))
    if status != 1:
        raise RuntimeError(f"could not announce {worker_id}: {status}")
    return lease


async def open_epoch(redis: Redis, keys: Keys) -> None:
    """What the reconciler does on its first pass over an empty record: allow placements."""
    from shared.allocation import Allocator

    await Allocator(redis, keys).restore([], epoch="test")


async def delete_prefix(redis: Redis, keys: Keys) -> None:
    batch = [k async for k in redis.scan_iter(match=keys.pattern(), count=1000)]
    if batch:
        await redis.unlink(*batch)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05,
    what: str = "condition",
) -> float:
    """Poll until `predicate()` is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wire(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any]) -> Wiring:
    """A process's parts, as a service's entry point builds them."""
    return Wiring.build(settings, redis, pool)


async def submitted(lifecycle: Lifecycle, **spec: Any) -> Job:
    job, _ = await lifecycle.submit(JobSpec(**spec))
    return job


def open_for_jobs(path: Path) -> Path:
    """Jobs run as `nobody` when the executor is root (services/executor/privilege.py): let them
    reach `path` (the test's temporary directories above it made searchable) and write in it.
    Nothing outside the system's temporary directory is touched."""
    if os.geteuid() != 0:
        return path
    top = Path(tempfile.gettempdir()).resolve()
    path = path.resolve()
    for d in [*reversed(path.parents), path]:
        if d.is_relative_to(top) and d != top:
            os.chmod(d, os.stat(d).st_mode & 0o7777 | 0o011)
    os.chmod(path, 0o777)
    return path


def alive_with(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains `text` (a test's unique marker)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(
                    p.info["cmdline"] or []):
                out.append(p)
    return out


async def allocated_cpus_released(redis: Redis, keys: Keys, *, timeout: float = 10.0) -> int:
    """The cluster's allocated CPUs in Redis, once they are back to 0 (or as they are after
    `timeout`). A job's end is recorded in PostgreSQL first and its capacity released in Redis
    just after (ARCHITECTURE's order), so a test that has just seen it end waits a moment."""
    deadline = time.monotonic() + timeout
    while True:
        cpus = int(await redis.get(keys.allocated_cpus) or 0)
        if cpus == 0 or time.monotonic() > deadline:
            return cpus
        await asyncio.sleep(0.05)


class Clock:
    """A clock moved by hand (`clock.now += 5`): what happens when is decided, not timed."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
