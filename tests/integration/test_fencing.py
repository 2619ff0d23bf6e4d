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
import pytest
from redis.asyncio import Redis

from services.executor.service import Executor
from shared.db.jobs import JobSpec, JobStore, Usage
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore
from shared.settings import Settings
from shared.states import JobState
from tests.helpers import open_epoch, open_for_jobs, wire


@pytest.fixture(autouse=True)
def _jobs_reach_tmp_path(tmp_path: Path) -> None:
    open_for_jobs(tmp_path)  # the executor is root here: its jobs run as nobody


async def executor(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any],
                   tmp_path: Path) -> Executor:
    s = dataclasses.replace(settings, worker_id="fenced", data_dir=tmp_path / "node",
                            worker_cpus=4, worker_memory_mb=1024, kill_grace_s=1.0,
                            node_fail_grace_s=1.0)
    ex = Executor(wire(s, redis, pool), dict(os.environ))
    await ex.start()
    return ex


async def allocated(pool: asyncpg.Pool[Any], script: str) -> int:
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script=script), idempotency_key=None)
    assert job is not None
    won = await t.place([(job.id, 1, "fenced")])
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
    await ex.runner.close()
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
    await ex.runner.close()
    await ex.heartbeat.deregister()


async def test_a_stale_executor_cannot_overwrite_a_newer_attempt(
    pool: asyncpg.Pool[Any]
) -> None:
    jobs, t = JobStore(pool), TransitionStore(pool)
    job = await t.insert(JobSpec(script="true", requeue=True), idempotency_key=None)
    assert job is not None
    await t.place([(job.id, 1, "old")])
    old = await t.start(job.id, 1, "old")
    assert old is not None
    # the cluster lost "old": NODE_FAIL, requeued, placed on "new", running there
    ended = await t.finish(old, JobState.NODE_FAIL, exit_code=None, signal=None, reason="lost",
                           usage=Usage(), again_after_s=0.0, retry=False)
    assert ended is not None and ended.again
    await t.place([(job.id, 2, "new")])
    new = await t.start(job.id, 2, "new")
    assert new is not None

    async def report(attempt: int, worker: str) -> object:
        stale = dataclasses.replace(new, attempt=attempt, worker_id=worker)
        return await t.finish(stale, JobState.COMPLETED, exit_code=0, signal=None, reason=None,
                              usage=Usage(), again_after_s=None, retry=False)

    # "old" comes back from its partition and reports the end of attempt 1
    assert await report(1, "old") is None
    # and even claiming attempt 2 fails: the worker guard
    assert await report(2, "old") is None
    current = await jobs.get(job.id)
    assert current is not None and current.state is JobState.RUNNING
    assert (current.attempt, current.worker_id) == (2, "new")


async def test_a_stale_job_directory_is_moved_aside(settings: Settings, redis: Redis,
                                                    keys: Keys, pool: asyncpg.Pool[Any],
                                                    tmp_path: Path) -> None:
    """A data directory reused with a new database: job 1 attempt 1 has a directory already,
    with a status and a planted link. The new job 1 must not read that status nor write
    through the link."""
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    job_id = await allocated(pool, "echo fresh\n")
    old = tmp_path / "node" / "jobs" / f"{job_id}.1"
    old.mkdir(parents=True)
    (old / "status").write_text("0\n")
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (old / "script").symlink_to(victim)
    assert await ex.runner.launch(job_id, 1) is True
    deadline = time.monotonic() + 10
    while job_id in ex.runner.running:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert victim.read_text() == "untouched\n"
    assert (old / "stdout").read_text() == "fresh\n"
    assert [p.name for p in old.parent.iterdir() if p.name.startswith(f"{job_id}.1.old-")]
    job = await JobStore(pool).get(job_id)
    assert job is not None and job.state is JobState.COMPLETED
    await ex.runner.close()
    await ex.heartbeat.deregister()
