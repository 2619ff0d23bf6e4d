"""Migrations and the guarded job statements against a real PostgreSQL (every operation from
every state: tests/integration/test_lifecycle_guards.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.db.jobs import JobSpec, JobStore, Usage
from shared.db.migrate import current_version, load_migrations, migrate
from shared.db.pool import connect, create_pool
from shared.errors import ConductorError
from shared.lifecycle.store import Finish, TransitionStore
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
            "ANY($1::text[])", ["jobs", "workers", "attempts", "schedules"])
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
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="echo hi", cpus=2, name="hello", user="ann"),
                         idempotency_key=None)
    assert job is not None and (job.state, job.reason, job.attempt) == (S.PENDING, "Priority", 1)
    [placed] = await t.place([(job.id, 1, "w1")])
    assert (placed.worker_id, placed.cpus) == ("w1", 2)
    running = await t.start(job.id, 1, "w1")
    assert running is not None and running.started_at is not None and running.worker_id == "w1"
    ended = await t.finish(running, S.COMPLETED, exit_code=0, signal=None, reason=None,
                           usage=Usage(peak_rss_kb=1024, cpu_user_s=0.5, cpu_system_s=0.25),
                           again_after_s=None, retry=False)
    assert ended is not None and not ended.again and ended.state is S.COMPLETED
    assert ended.job.finished_at is not None and ended.job.exit_code == 0
    [attempt] = await JobStore(pool).attempts(job.id)
    assert (attempt.state, attempt.worker_id, attempt.exit_code) == ("COMPLETED", "w1", 0)
    assert attempt.started_at == running.started_at and attempt.finished_at is not None
    assert attempt.usage.cpu_s == 0.75 and attempt.usage.peak_rss_kb == 1024


async def test_only_one_of_many_racing_starts_wins(pool: asyncpg.Pool[Any]) -> None:
    """Twenty concurrent ALLOCATED -> RUNNING for one attempt: exactly one wins."""
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="true"), idempotency_key=None)
    assert job is not None
    await t.place([(job.id, 1, "w")])
    results = await asyncio.gather(*(t.start(job.id, 1, "w") for _ in range(20)))
    assert sum(r is not None for r in results) == 1


async def test_a_stale_attempt_cannot_write(pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="true", requeue=True), idempotency_key=None)
    assert job is not None
    await t.place([(job.id, 1, "w")])
    running = await t.start(job.id, 1, "w")
    assert running is not None
    ended = await t.finish(running, S.NODE_FAIL, exit_code=None, signal=None, reason="lost",
                           usage=Usage(), again_after_s=0.0, retry=False)
    assert ended is not None and ended.again and ended.state is S.NODE_FAIL
    again = ended.job
    assert again.attempt == 2 and again.state is S.PENDING
    assert again.worker_id is None and again.started_at is None
    # the old attempt's executor comes back and tries to report
    assert await t.finish(running, S.COMPLETED, exit_code=0, signal=None, reason=None,
                          usage=Usage(), again_after_s=None, retry=False) is None
    assert await t.start(job.id, 1, "w") is None
    assert (await JobStore(pool).get(job.id)).attempt == 2  # type: ignore[union-attr]


async def test_our_connections_run_without_jit(database_url: str) -> None:
    """JIT compiled a per-pass statement for tens of milliseconds (shared/db/pool.py): every
    connection we open turns it off, and keeps its application name."""
    pool = await create_pool(database_url, min_size=1, max_size=1, application_name="scns-a")
    conn = await connect(database_url, application_name="scns-b")
    try:
        async with pool.acquire() as pooled:
            assert await pooled.fetchval("SHOW jit") == "off"
            assert await pooled.fetchval("SHOW application_name") == "scns-a"
        assert await conn.fetchval("SHOW jit") == "off"
        assert await conn.fetchval("SHOW application_name") == "scns-b"
    finally:
        await conn.close()
        await pool.close()


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


async def test_a_batch_of_starts_and_ends_answers_each_item_on_its_own(
        pool: asyncpg.Pool[Any]) -> None:
    """What the executor's group commit writes: one statement for many attempts, each guarded
    alone (a stale or repeated item loses without costing the others theirs)."""
    t = TransitionStore(pool)
    jobs = [await t.insert(JobSpec(script="true", requeue=i == 0), idempotency_key=None)
            for i in range(4)]
    ids = [j.id for j in jobs if j is not None]
    await t.place([(i, 1, "w") for i in ids[:3]])  # the fourth stays PENDING
    started = await t.start_many([(ids[0], 1, "w"), (ids[1], 1, "w"), (ids[1], 1, "w"),
                                  (ids[2], 1, "other"), (ids[3], 1, "w")])
    assert [s.id if s else None for s in started] == [ids[0], ids[1], None, None, None]
    first, second = started[0], started[1]
    assert first is not None and second is not None
    ended = await t.finish_many([
        Finish(job=first, state=S.NODE_FAIL, reason="lost", again_after_s=0.0),
        Finish(job=second, state=S.COMPLETED, exit_code=0),
        Finish(job=second, state=S.FAILED, exit_code=1)])  # a repeat: answered once
    a, b, repeat = ended
    assert a is not None and a.again and a.job.attempt == 2 and a.job.state is S.PENDING
    assert b is not None and not b.again and b.job.state is S.COMPLETED and b.job.exit_code == 0
    assert repeat is None
    assert (await JobStore(pool).get(ids[1])).state is S.COMPLETED  # type: ignore[union-attr]
    attempts = await JobStore(pool).attempts(ids[0])
    assert [(x.attempt, x.state, x.reason) for x in attempts] == [(1, "NODE_FAIL", "lost")]


async def test_racing_starts_through_the_lifecycle_batch_one_wins(wiring: Any) -> None:
    """Twenty launches of one attempt arriving together join one batch: exactly one wins."""
    t = TransitionStore(wiring.pool)
    job = await t.insert(JobSpec(script="true"), idempotency_key=None)
    assert job is not None
    await t.place([(job.id, 1, "w")])
    results = await asyncio.gather(*(wiring.lifecycle.start(job.id, 1, "w") for _ in range(20)))
    assert sum(r is not None for r in results) == 1


async def test_submits_arriving_together_are_one_insert_each_getting_its_own_job(
        wiring: Any) -> None:
    """The gateway's group commit: concurrent submits (no idempotency key) become one
    statement, and each caller gets the job made from its own request."""
    specs = [JobSpec(script=f"echo {i}\n", name=f"n{i % 3}", cpus=1 + i % 4, user=f"u{i % 2}",
                     priority=i, hold=i % 5 == 0, env={"I": str(i)}) for i in range(40)]
    specs += [JobSpec(script="same\n")] * 3  # identical requests: still one job each
    made = await asyncio.gather(*(wiring.lifecycle.submit(s) for s in specs))
    jobs = [j for j, created in made if created]
    assert len(jobs) == len(specs) and len({j.id for j in jobs}) == len(specs)
    for spec, job in zip(specs, jobs, strict=True):
        assert (job.script, job.name, job.cpus, job.user, job.priority, dict(job.env)) == (
            spec.script, spec.name, spec.cpus, spec.user, spec.priority, dict(spec.env))
        assert job.reason == ("Held" if spec.hold else "Priority")
    stored = {j.id: j for j in [await JobStore(wiring.pool).get(j.id) for j in jobs] if j}
    assert all(stored[j.id].script == j.script for j in jobs)
