"""Migrations and the guarded job state machine against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.db.jobs import JobSpec, JobStore
from shared.db.migrate import current_version, load_migrations, migrate
from shared.db.pool import create_pool
from shared.errors import ConductorError
from shared.states import JobState

S = JobState


async def test_migrations_run_concurrently_from_four_processes(
    empty_database_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = (
        "import asyncio, os, sys, time\n"
        "from shared.db.migrate import migrate\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"print(asyncio.run(migrate({empty_database_url!r})))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    await asyncio.sleep(0.5)  # let all four import and wait at the line
    go.write_text("go")
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    applied = [out.strip() for out, _ in outputs]
    everything = str([m.version for m in load_migrations()])
    # exactly one process applied the migrations, the other three found nothing to do
    assert applied.count("[]") == 3
    assert applied.count(everything) == 1
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await current_version(conn) == load_migrations()[-1].version
        assert await conn.fetchval("SELECT count(*) FROM scns_schema_version") == len(
            load_migrations())
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = "
            "ANY($1::text[])", ["jobs", "workers", "allocations", "schedules"])
        assert tables == 4
    finally:
        await conn.close()


async def test_migrate_is_idempotent(empty_database_url: str) -> None:
    first = await migrate(empty_database_url)
    assert first == [m.version for m in load_migrations()]
    assert await migrate(empty_database_url) == []


async def test_an_edited_migration_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("UPDATE scns_schema_version SET checksum = 'x' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(ConductorError, match="changed after it was applied"):
        await migrate(empty_database_url)


async def test_the_happy_path_of_a_job(pool: asyncpg.Pool[Any]) -> None:
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="echo hi", cpus=2, name="hello", user="ann"))
    assert (job.state, job.reason, job.attempt) == (S.PENDING, "Priority", 1)
    job2 = await jobs.transition(job.id, attempt=1, to=S.ALLOCATED, worker_id="w1")
    assert job2 is not None and job2.state is S.ALLOCATED and job2.worker_id == "w1"
    assert job2.allocated_at is not None
    job3 = await jobs.transition(job.id, attempt=1, to=S.RUNNING)
    assert job3 is not None and job3.started_at is not None and job3.worker_id == "w1"
    job4 = await jobs.transition(job.id, attempt=1, to=S.COMPLETED, exit_code=0)
    assert job4 is not None and job4.finished_at is not None and job4.exit_code == 0


async def test_guards_refuse_what_the_state_machine_forbids(pool: asyncpg.Pool[Any]) -> None:
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="true"))
    assert await jobs.transition(job.id, attempt=1, to=S.RUNNING) is None  # skips ALLOCATED
    assert await jobs.transition(job.id, attempt=1, to=S.COMPLETED) is None
    assert await jobs.transition(job.id, attempt=2, to=S.ALLOCATED, worker_id="w") is None
    assert (await jobs.get(job.id)).state is S.PENDING  # type: ignore[union-attr]


async def test_only_one_of_many_racing_transitions_wins(pool: asyncpg.Pool[Any]) -> None:
    """Twenty concurrent ALLOCATED -> RUNNING for one attempt: exactly one wins."""
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="true"))
    await jobs.transition(job.id, attempt=1, to=S.ALLOCATED, worker_id="w")
    results = await asyncio.gather(*(jobs.transition(job.id, attempt=1, to=S.RUNNING)
                                     for _ in range(20)))
    assert sum(r is not None for r in results) == 1


async def test_a_stale_attempt_cannot_write(pool: asyncpg.Pool[Any]) -> None:
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="true", requeue=True))
    await jobs.transition(job.id, attempt=1, to=S.ALLOCATED, worker_id="w")
    await jobs.transition(job.id, attempt=1, to=S.RUNNING)
    await jobs.transition(job.id, attempt=1, to=S.NODE_FAIL)
    again = await jobs.requeue(job.id, attempt=1)
    assert again is not None and again.attempt == 2 and again.state is S.PENDING
    assert again.worker_id is None and again.started_at is None
    # the old attempt's executor comes back and tries to report
    assert await jobs.transition(job.id, attempt=1, to=S.COMPLETED, exit_code=0) is None
    assert await jobs.requeue(job.id, attempt=1) is None  # requeue is fenced too
    assert (await jobs.get(job.id)).attempt == 2  # type: ignore[union-attr]


async def test_terminal_states_are_final(pool: asyncpg.Pool[Any]) -> None:
    jobs = JobStore(pool)
    job = await jobs.insert(JobSpec(script="true"))
    assert await jobs.transition(job.id, attempt=1, to=S.CANCELLED) is not None
    for target in (S.PENDING, S.ALLOCATED, S.RUNNING, S.COMPLETED, S.FAILED):
        assert await jobs.transition(job.id, attempt=1, to=target, worker_id="w") is None


async def test_pool_release_rolls_back_an_abandoned_transaction(database_url: str) -> None:
    """Our pool skips asyncpg's full session reset (a round trip per release); a task cancelled
    inside a transaction must still not hand the next user an open transaction or its writes."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async def abandon() -> None:
            async with pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                await conn.execute("INSERT INTO jobs (script, cpus) VALUES ('echo', 1)")
                await asyncio.sleep(10)  # cancelled here, transaction open

        task = asyncio.create_task(abandon())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire() as conn:  # the only connection, handed on
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    finally:
        await pool.close()
