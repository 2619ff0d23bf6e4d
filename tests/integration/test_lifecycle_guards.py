"""Every guarded statement of the lifecycle, tried from every job state against a real
PostgreSQL: it changes the job exactly when the transition table (shared/states.py) lists that
state as a source of its operation. This is the behaviour the unit test
(tests/unit/test_transitions.py) checks the SQL text for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.db.jobs import Job, JobSpec, JobStore, Usage
from shared.lifecycle.store import Changes, TransitionStore
from shared.states import TRANSITIONS, JobState, Op

S = JobState
Attempt = Callable[[TransitionStore, Job], Awaitable[bool]]


async def _place(t: TransitionStore, j: Job) -> bool:
    return bool(await t.place([(j.id, j.attempt, "w")]))


async def _hand_back(t: TransitionStore, j: Job) -> bool:
    return bool(await t.hand_back([(j.id, j.attempt, "w")], "Priority"))


async def _start(t: TransitionStore, j: Job) -> bool:
    return await t.start(j.id, j.attempt, "w") is not None


async def _finish(t: TransitionStore, j: Job) -> bool:
    return await t.finish(j, S.COMPLETED, exit_code=0, signal=None, reason=None, usage=Usage(),
                          again_after_s=None, retry=False) is not None


async def _cancel(t: TransitionStore, j: Job) -> bool:
    return await t.cancel_unstarted(j.id, "test") is not None


async def _request_stop(t: TransitionStore, j: Job) -> bool:
    return await t.request_stop(j.id, cancel=True) is not None


async def _hold(t: TransitionStore, j: Job) -> bool:
    return await t.hold(j.id) is not None


async def _release(t: TransitionStore, j: Job) -> bool:
    return await t.release(j.id) is not None


async def _update(t: TransitionStore, j: Job) -> bool:
    return await t.update(j.id, Changes(priority=7, set=frozenset({"priority"}))) is not None


async def _reason(t: TransitionStore, j: Job) -> bool:
    await t.set_reasons({j.id: "Resources"})
    after = await JobStore(t.db).get(j.id)
    return after is not None and after.reason == "Resources"


async def _requeue(t: TransitionStore, j: Job) -> bool:
    return await t.requeue(j.id) is not None


OPS: dict[Op, Attempt] = {
    Op.PLACE: _place, Op.HAND_BACK: _hand_back, Op.START: _start, Op.FINISH: _finish,
    Op.CANCEL: _cancel, Op.REQUEST_STOP: _request_stop, Op.HOLD: _hold, Op.RELEASE: _release,
    Op.UPDATE: _update, Op.REASON: _reason, Op.REQUEUE: _requeue,
}


async def job_in(pool: asyncpg.Pool[Any], state: JobState) -> Job:
    """A job put straight into `state` on worker w (tests may write SQL; services may not)."""
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="true"), idempotency_key=None)
    assert job is not None
    row = await pool.fetchrow(
        "UPDATE jobs SET state = $2, worker_id = CASE WHEN $2 = 'PENDING' THEN NULL ELSE 'w' "
        "END, reason = CASE WHEN $2 = 'PENDING' THEN 'Priority' END WHERE id = $1 RETURNING *",
        job.id, str(state))
    await pool.execute("INSERT INTO attempts (job_id, attempt, worker_id, cpus) "
                       "VALUES ($1, 1, 'w', 1)", job.id)
    return Job.from_row(row)


def test_every_operation_is_tried_here() -> None:
    assert set(OPS) == set(Op) - {Op.SUBMIT}


@pytest.mark.parametrize("op", sorted(OPS))
async def test_an_operation_applies_exactly_from_its_source_states(
    pool: asyncpg.Pool[Any], op: Op
) -> None:
    t = TransitionStore(pool)
    applied = set()
    for state in JobState:
        job = await job_in(pool, state)
        if await OPS[op](t, job):
            applied.add(state)
    assert applied == TRANSITIONS[op].sources


async def test_placement_passes_by_held_and_waiting_jobs(pool: asyncpg.Pool[Any]) -> None:
    """The scheduler read the job before someone held it: its placement must not happen."""
    t = TransitionStore(pool)
    held = await job_in(pool, S.PENDING)
    await t.hold(held.id)
    later = await t.insert(JobSpec(script="true", begin_at=datetime.now(UTC)
                                   + timedelta(hours=1)), idempotency_key=None)
    assert later is not None and later.reason == "BeginTime"
    assert await t.place([(held.id, 1, "w"), (later.id, 1, "w")]) == []


async def test_the_scheduler_never_overwrites_a_sticky_reason(pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    job = await job_in(pool, S.PENDING)
    await t.hold(job.id)
    await t.set_reasons({job.id: "Resources"})
    assert (await JobStore(pool).get(job.id)).reason == "Held"  # type: ignore[union-attr]


async def test_racing_ends_of_one_attempt_record_exactly_one(pool: asyncpg.Pool[Any]) -> None:
    """The executor's end and the reconciler's NODE_FAIL of the same attempt, twenty at once,
    some of them starting a new attempt: one wins, and the attempt's row says what it said."""
    import asyncio

    t = TransitionStore(pool)
    job = await job_in(pool, S.RUNNING)
    job = replace(job, requeue=True)
    ends = [(S.COMPLETED if i % 2 else S.NODE_FAIL, 0.0 if i % 4 == 0 else None)
            for i in range(20)]
    results = await asyncio.gather(*(
        t.finish(job, state, exit_code=0 if state is S.COMPLETED else None, signal=None,
                 reason=None, usage=Usage(), again_after_s=again, retry=False)
        for state, again in ends))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    [won] = winners
    [row] = await JobStore(pool).attempts(job.id)
    assert row.state == won.state
    current = await JobStore(pool).get(job.id)
    assert current is not None and current.attempt == (2 if won.again else 1)


async def test_a_cancel_recorded_before_the_end_wins_over_its_requeue(
    pool: asyncpg.Pool[Any]
) -> None:
    t = TransitionStore(pool)
    job = await job_in(pool, S.RUNNING)
    await t.request_stop(job.id, cancel=False)  # a requeue was asked for...
    await t.request_stop(job.id, cancel=True)  # ...then a cancel
    ended = await t.finish(job, S.NODE_FAIL, exit_code=None, signal=None, reason="lost",
                           usage=Usage(), again_after_s=0.0, retry=False)
    assert ended is not None and not ended.again
    assert (ended.state, ended.job.state, ended.job.reason) == (S.CANCELLED, S.CANCELLED,
                                                                "cancelled")
