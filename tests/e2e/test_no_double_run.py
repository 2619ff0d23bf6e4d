"""Acceptance: two racing scheduler replicas and duplicated arq deliveries never run one attempt
twice. Every job script appends `job:attempt` to a marker file; each line must appear once."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis

from shared.dispatch import LAUNCH
from shared.events import JobAllocated, decode
from shared.keys import Keys
from tests.e2e.conftest import Factory
from tests.procs import running, start_service

N = 200


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_racing_schedulers_and_duplicate_deliveries(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path
) -> None:
    r = await asyncio.to_thread(start_system, workers=2, cpus=4, scheduler_exclusive=False)
    second = start_service("scheduler-2", "services.scheduler", r.settings, tmp_path)
    marker = tmp_path / "marker"
    arq = ArqRedis(ConnectionPool.from_url(r.settings.redis_url), job_serializer=orjson.dumps,
                   job_deserializer=orjson.loads)
    duplicated = 0
    stop = asyncio.Event()

    async def duplicate_every_launch() -> None:
        """For each job-allocated event, deliver the launch twice more: once to the right worker
        under another arq id (a redelivery), once to the other worker (a misdelivery)."""
        nonlocal duplicated
        last = "0-0"
        while not stop.is_set():
            reply = await redis.xread({keys.stream(JobAllocated.TYPE): last}, block=200)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    e = decode(fields["e"])
                    assert isinstance(e, JobAllocated)
                    other = "test-worker-1" if e.worker_id == "test-worker-2" else "test-worker-2"
                    for n, target in enumerate((e.worker_id, other)):
                        await arq.enqueue_job(LAUNCH, e.job_id, e.attempt,
                                              _job_id=f"{keys.prefix}dup{n}-{e.job_id}",
                                              _queue_name=keys.arq_queue(target))
                        duplicated += 1

    with running([second]):
        dup_task = asyncio.create_task(duplicate_every_launch())
        for i in range(N):
            await asyncio.to_thread(r.client.call, "POST", "/api/v1/jobs", {
                "script": f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\nsleep 0.{i % 3}\n',
                "cpus": 1 + i % 2})
        deadline = time.monotonic() + 240
        while await pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'COMPLETED'") < N:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        # a job-allocated event is published after its launch is enqueued: a job may end
        # before its event is read. Every one is, soon after.
        deadline = time.monotonic() + 30
        while duplicated < 2 * N:
            assert time.monotonic() < deadline, f"{duplicated} duplicate deliveries of {2 * N}"
            await asyncio.sleep(0.1)
        stop.set()
        await dup_task
    await arq.aclose(close_connection_pool=True)
    assert duplicated == 2 * N

    def deliveries() -> tuple[int, int]:
        """Launches the executors' guard dropped so far; launches the reconciler enqueued
        again (an ALLOCATED job's launch it found gone, a moment after it was consumed: each
        one more delivery for the guard)."""
        dropped = sum(p.read_text().count("launch dropped")
                      for p in r.system.logs.glob("executor-*.log"))
        again = sum(int(n) for n in re.findall(r"\breenqueued=(\d+)",
                                               (r.system.logs / "reconciler.log").read_text()))
        return dropped, again

    # every delivery but the one that ran its attempt is dropped by the guard: poll until the
    # last duplicates still on a queue have been taken (then none can run anything any more)
    deadline = time.monotonic() + 30
    while True:
        dropped, again = deliveries()
        if dropped == duplicated + again or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    lines = marker.read_text().split()
    assert len(lines) == N, f"{len(lines)} runs for {N} jobs"
    assert len(set(lines)) == N, "an attempt ran twice"
    print(f"{N} jobs, {duplicated} duplicate deliveries, {again} re-enqueued by the "
          f"reconciler, {dropped} dropped by the guard")
    assert dropped == duplicated + again
    assert await pool.fetchval("SELECT count(*) FROM attempts") == N
