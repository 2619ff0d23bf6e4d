"""allocate.lua takes a whole batch of jobs in one call (Allocator.allocate_many): each job must
come out exactly as it would from a call of its own, in order, and a batch run twice (a retried
command) must answer the same and change nothing."""

from __future__ import annotations

import random

import pytest
from redis.asyncio import Redis

from shared import allocation
from shared.allocation import Allocator, Outcome, Placement
from shared.keys import Keys
from shared.membership import Membership
from tests.helpers import add_worker, open_epoch
from tests.integration.test_allocation import WORKERS, Model, check_invariants


async def _cluster(redis: Redis, keys: Keys) -> tuple[Allocator, Membership]:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys, membership.scripts)
    for w, (c, m) in WORKERS.items():
        await add_worker(membership, w, cpus=c, memory_mb=m)
    return alloc, membership


@pytest.mark.parametrize("seed", range(8))
async def test_a_batch_is_each_job_in_turn(redis: Redis, keys: Keys, seed: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(allocation, "BATCH", rng.choice([1, 7, 250]))  # calls split anywhere
    await open_epoch(redis, keys)
    alloc, _ = await _cluster(redis, keys)
    model = Model(caps=dict(WORKERS))
    names = [*sorted(WORKERS), "unknown"]
    for _ in range(4):
        items = [(rng.randint(1, 60), rng.randint(1, 2), rng.randint(1, 12),
                  rng.choice([0, 0, 512, 2048, 6000]), rng.choice(names))
                 for _ in range(rng.randint(1, 120))]
        want = [model.allocate(j, a, c, m, [w] if w in WORKERS else []) for j, a, c, m, w in items]
        assert await alloc.allocate_many(items) == want
        await check_invariants(alloc, model)
        assert await alloc.allocate_many(items) == [  # again: the same answers, nothing taken
            model.allocate(j, a, c, m, [w] if w in WORKERS else []) for j, a, c, m, w in items]
        await check_invariants(alloc, model)
        for job in rng.sample(sorted(model.records), k=len(model.records) // 2):
            w, _, _, a = model.records[job]
            assert await alloc.release(job_id=job, attempt=a, worker_id=w) == 1
            model.release(job, a, w)


async def test_a_batch_skips_workers_that_cannot_take_jobs(redis: Redis, keys: Keys) -> None:
    await open_epoch(redis, keys)
    alloc, membership = await _cluster(redis, keys)
    await membership.set_drain("w0", True)
    await redis.delete(keys.worker_lease("w1"))  # lease lapsed, not yet swept
    got = await alloc.allocate_many([(1, 1, 1, 0, "w0"), (2, 1, 1, 0, "w1"), (3, 1, 1, 0, "w2"),
                                     (4, 1, 4, 0, "w2")])
    assert [p.outcome for p in got] == [Outcome.NO_ROOM, Outcome.NO_ROOM, Outcome.PLACED,
                                        Outcome.NO_ROOM]  # w2 has 4 CPUs: 1 taken by job 3
    assert (await alloc.usage(["w2"]))["w2"].cpus == 1


async def test_a_batch_waits_for_the_records_to_be_rebuilt(redis: Redis, keys: Keys) -> None:
    alloc, _ = await _cluster(redis, keys)
    got = await alloc.allocate_many([(1, 1, 1, 0, "w0"), (2, 1, 1, 0, "w1")])
    assert got == [Placement(outcome=Outcome.NOT_READY)] * 2
    assert await alloc.records() == {}
    await open_epoch(redis, keys)
    got = await alloc.allocate_many([(1, 1, 1, 0, "w0"), (2, 1, 1, 0, "w1")])
    assert got == [Placement(outcome=Outcome.PLACED, worker_id="w0"),
                   Placement(outcome=Outcome.PLACED, worker_id="w1")]
