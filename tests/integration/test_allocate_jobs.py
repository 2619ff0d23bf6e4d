"""allocate_jobs (TransitionStore.place) answers exactly the placements it won, each as its
attempt row was written: on every execution (a prepared statement settles on a generic plan
after five), and for a placement handed back and made again (its attempt row updated in place).
Which states it places from is tests/integration/test_lifecycle_guards.py's."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db.jobs import JobSpec
from shared.lifecycle.store import Allocated, TransitionStore
from shared.states import PendingReason


async def attempt_rows(pool: asyncpg.Pool[Any], ids: list[int]) -> dict[int, tuple[Any, ...]]:
    rows = await pool.fetch("SELECT job_id, attempt, worker_id, cpus, memory_mb, released_at "
                            "FROM attempts WHERE job_id = any($1::bigint[])", ids)
    return {r["job_id"]: tuple(r)[1:] for r in rows}


async def test_every_execution_answers_the_won_jobs_with_their_attempt_rows(
        pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    jobs = await t.insert_many([JobSpec(script="true", cpus=1 + i % 3,
                                        memory_mb=None if i % 2 else 100 * i)
                                for i in range(80)])
    for page in range(8):  # past the fifth execution: the generic plan
        mine = jobs[page * 10:(page + 1) * 10]
        held, rest = mine[0], mine[1:]
        await t.hold(held.id)
        plan = [(j.id, j.attempt, f"w{j.id % 4}") for j in mine]
        plan.append((rest[0].id, rest[0].attempt + 1, "w9"))  # a stale attempt: refused
        won = await t.place(plan)
        assert sorted(won, key=lambda a: a.job_id) == [
            Allocated(job_id=j.id, attempt=j.attempt, worker_id=f"w{j.id % 4}", cpus=j.cpus,
                      memory_mb=j.memory_mb or 0) for j in rest]
        rows = await attempt_rows(pool, [j.id for j in mine])
        assert rows == {j.id: (j.attempt, f"w{j.id % 4}", j.cpus, j.memory_mb or 0, None)
                        for j in rest}
        assert await t.place(plan) == []  # placed already: nothing is won twice


async def test_a_placement_handed_back_and_made_again_updates_its_attempt_row(
        pool: asyncpg.Pool[Any]) -> None:
    t = TransitionStore(pool)
    job = (await t.insert_many([JobSpec(script="true", cpus=2, memory_mb=512)]))[0]
    for round_, worker in enumerate(("w1", "w2", "w3", "w1", "w2", "w3", "w1")):
        won = await t.place([(job.id, job.attempt, worker)])
        assert won == [Allocated(job_id=job.id, attempt=job.attempt, worker_id=worker, cpus=2,
                                 memory_mb=512)], round_
        assert await attempt_rows(pool, [job.id]) == {job.id: (1, worker, 2, 512, None)}
        assert len(await t.hand_back([(job.id, job.attempt, worker)],
                                     PendingReason.RESOURCES)) == 1
        assert (await attempt_rows(pool, [job.id]))[job.id][4] is not None  # released
