"""The follows' shared view of a job's progress (services/gateway/follow.py): one query for
many askers, never staler than its period, two columns read."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.gateway.follow import JobProgress
from shared.db.jobs import JobSpec, Usage
from shared.db.queries import q
from shared.lifecycle.store import TransitionStore
from shared.states import JobState


async def test_many_followers_of_a_job_cost_one_query(pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="x" * 100_000), idempotency_key=None)
    assert job is not None
    progress = JobProgress(pool, ttl_s=3600.0)
    answers = await asyncio.gather(*(progress.ended(job.id, 1) for _ in range(500)))
    assert answers == [False] * 500 and progress.queries == 1
    assert await progress.ended(job.id, 1) is False and progress.queries == 1  # cached
    assert await progress.ended(job.id + 1000, 1) is True  # no such job: nothing to follow
    assert "script" not in q("job_progress") and "*" not in q("job_progress")


async def test_an_end_is_seen_within_the_period(pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="true"), idempotency_key=None)
    assert job is not None and await t.place([(job.id, 1, "w")])
    started = await t.start(job.id, 1, "w")
    assert started is not None
    progress = JobProgress(pool, ttl_s=0.0)  # every call asks
    assert await progress.ended(job.id, 1) is False
    await t.finish(started, JobState.COMPLETED, exit_code=0, signal=None, reason=None,
                   usage=Usage(), again_after_s=None, retry=False)
    assert await progress.ended(job.id, 1) is True
    assert await progress.ended(job.id, 2) is True  # not the current attempt either
    assert progress.queries == 3
