"""Fencing in the executor: no lease, no new work; a lease lapsed long enough stops running
jobs; a stale executor's late writes bounce off the attempt and worker guards."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.executor.service import Executor
from shared.db.jobs import JobSpec, JobStore, QueueStore, finish
from shared.keys import Keys
from shared.settings import Settings
from shared.states import JobState
from tests.helpers import open_epoch


async def executor(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any],
                   tmp_path: Path) -> Executor:
    s = dataclasses.replace(settings, worker_id="fenced", data_dir=tmp_path / "node",
                            worker_cpus=4, worker_memory_mb=1024, kill_grace_s=1.0,
                            node_fail_grace_s=1.0)
    ex = Executor(s, redis, pool, dict(os.environ))
    await ex.start()
    return ex


async def allocated(pool: asyncpg.Pool[Any], script: str) -> int:
    job = await JobStore(pool).insert(JobSpec(script=script))
    won = await QueueStore(pool).allocate([(job.id, 1, "fenced")])
    assert won
    return job.id


async def test_no_valid_lease_no_new_jobs(settings: Settings, redis: Redis, keys: Keys,
                                          pool: asyncpg.Pool[Any], tmp_path: Path) -> None:
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    job_id = await allocated(pool, "echo should-not-run\n")
    ex.heartbeat._last_ok = time.monotonic() - 3600  # Redis unreachable for an hour
    assert await ex.runner.launch(job_id, 1) is False
    job = await JobStore(pool).get(job_id)
    assert job is not None and job.state is JobState.PENDING and job.attempt == 1
    assert not (tmp_path / "node" / "jobs" / f"{job_id}.1").exists()
    await ex.heartbeat.deregister()


async def test_a_lapsed_lease_stops_running_jobs(settings: Settings, redis: Redis, keys: Keys,
                                                 pool: asyncpg.Pool[Any],
                                                 tmp_path: Path) -> None:
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    job_id = await allocated(pool, "sleep 60\n")
    assert await ex.runner.launch(job_id, 1) is True
    rj = ex.runner.running[job_id]
    await rj.proc.child_pid
    ex.heartbeat._last_ok = time.monotonic() - (ex.fence_kill_after_s + 1)
    stop = asyncio.Event()
    fence = asyncio.create_task(ex._fence(stop))
    deadline = time.monotonic() + 10
    while job_id in ex.runner.running:
        assert time.monotonic() < deadline, "the fence did not stop the job"
        await asyncio.sleep(0.1)
    stop.set()
    await fence
    job = await JobStore(pool).get(job_id)
    assert job is not None and job.state is JobState.NODE_FAIL
    await ex.heartbeat.deregister()


async def test_a_stale_executor_cannot_overwrite_a_newer_attempt(
    pool: asyncpg.Pool[Any]
) -> None:
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="true", requeue=True))
    await QueueStore(pool).allocate([(job.id, 1, "old")])
    await QueueStore(pool).start(job.id, 1, "old")
    # the cluster lost "old": NODE_FAIL, requeued, placed on "new", running there
    await pool.execute("UPDATE jobs SET state = 'NODE_FAIL' WHERE id = $1", job.id)
    await jobs.requeue(job.id, attempt=1)
    await QueueStore(pool).allocate([(job.id, 2, "new")])
    await QueueStore(pool).start(job.id, 2, "new")
    # "old" comes back from its partition and reports the end of attempt 1
    assert await finish(pool, job_id=job.id, attempt=1, worker_id="old",
                        state=JobState.COMPLETED, exit_code=0, signal=None) is None
    # and even claiming attempt 2 fails: the worker guard
    assert await finish(pool, job_id=job.id, attempt=2, worker_id="old",
                        state=JobState.COMPLETED, exit_code=0, signal=None) is None
    current = await jobs.get(job.id)
    assert current is not None and current.state is JobState.RUNNING
    assert (current.attempt, current.worker_id) == (2, "new")
