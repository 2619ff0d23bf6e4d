"""Fencing in the executor: no lease, no new work; a lease lapsed long enough stops running
jobs; a stale executor's late writes bounce off the attempt and worker guards."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
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
                            node_fail_grace_s=3.0, fence_margin_s=1.0)
    assert not s.problems()
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
    ex.heartbeat._last_ok = time.monotonic() - (ex.fence.term_after_s + 0.1)
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


async def test_the_fence_kills_a_job_that_ignores_sigterm(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """SIGTERM, then SIGKILL a kill grace later: the fence does not wait for the job."""
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    job_id = await allocated(pool, "trap '' TERM\nwhile :; do sleep 0.2; done\n")
    assert await ex.runner.launch(job_id, 1) is True
    pgid = await ex.runner.running[job_id].proc.child_pid
    ex.heartbeat._last_ok = time.monotonic() - (ex.fence.term_after_s + 0.1)
    stop = asyncio.Event()
    fence = asyncio.create_task(ex._fence(stop))
    deadline = time.monotonic() + 30
    while job_id in ex.runner.running:
        assert time.monotonic() < deadline, "the fence did not kill the job"
        await asyncio.sleep(0.1)
    stop.set()
    await fence
    assert not psutil.pid_exists(pgid) or psutil.Process(pgid).status() == psutil.STATUS_ZOMBIE
    job = await JobStore(pool).get(job_id)
    assert job is not None and job.state is JobState.NODE_FAIL and job.signal == 9
    await ex.runner.close()
    await ex.heartbeat.deregister()


@pytest.mark.parametrize("lapsed", [False, True])
async def test_a_start_answered_after_a_lapse_does_not_run(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any], tmp_path: Path,
    lapsed: bool,
) -> None:
    """The start committed, but its answer came back after the lease may have lapsed (a
    partition): meanwhile the cluster may have declared the worker lost and run the job
    elsewhere. It must not run here: NODE_FAIL, requeued as it asked."""
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    t = TransitionStore(pool)
    spec = await t.insert(JobSpec(script="echo ran\n", requeue=True), idempotency_key=None)
    assert spec is not None and await t.place([(spec.id, 1, "fenced")])
    sent = time.monotonic()
    job = await ex.lifecycle.start(spec.id, 1, "fenced")
    assert job is not None
    if lapsed:  # renewed only after a gap longer than the TTL
        ex.heartbeat._last_ok = time.monotonic() - 3600
        await ex.heartbeat.beat()
    await ex.runner.run_fenced(job, sent)
    jobdir = tmp_path / "node" / "jobs" / f"{spec.id}.1"
    if lapsed:
        assert not jobdir.exists()
        row = await JobStore(pool).get(spec.id)
        assert row is not None and row.state is JobState.PENDING and row.attempt == 2
    else:
        deadline = time.monotonic() + 10
        while spec.id in ex.runner.running or not jobdir.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        row = await JobStore(pool).get(spec.id)
        assert row is not None and row.state is JobState.COMPLETED and row.attempt == 1
    await ex.runner.close()
    await ex.heartbeat.deregister()


@pytest.mark.parametrize("module", ["services.executor", "services.reconciler"])
def test_a_service_with_margins_that_do_not_fit_refuses_to_start(module: str) -> None:
    """Before it connects to anything: one clear line, exit 78 (EX_CONFIG)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCNS_")}
    env |= {"SCNS_NODE_FAIL_GRACE_S": "5", "SCNS_KILL_GRACE_S": "10",
            "SCNS_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 78, done.stderr
    assert "SCNS_NODE_FAIL_GRACE_S=5 is too short for SCNS_KILL_GRACE_S=10" in done.stderr
    assert "Traceback" not in done.stderr
