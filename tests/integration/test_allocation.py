"""The allocation and release scripts against a real Redis.

The property test drives thousands of random allocate / duplicate-allocate / release /
duplicate-release operations across several workers and checks, after every single operation,
that no worker is over-committed, that the counters equal the sum of the records, and that the
outcome is exactly what a plain-Python model of first-fit placement predicts (so a duplicate is
visibly a no-op that answers the same worker).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from shared.allocation import Allocator, Outcome, Placement, Usage
from shared.keys import Keys
from shared.membership import Membership
from tests.helpers import add_worker, delete_prefix, open_epoch

OPS_RUN = [0]
WORKERS = {"w0": (8, 16_384), "w1": (16, 32_768), "w2": (4, 4_096), "w3": (32, 8_192)}


@dataclass
class Model:
    caps: dict[str, tuple[int, int]]
    records: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)

    def used(self, w: str) -> tuple[int, int]:
        rows = [r for r in self.records.values() if r[0] == w]
        return sum(r[1] for r in rows), sum(r[2] for r in rows)

    def allocate(self, job: int, attempt: int, cpus: int, mem: int,
                 cands: list[str]) -> Placement:
        if job in self.records:
            w, _, _, a = self.records[job]
            if a == attempt:
                return Placement(outcome=Outcome.PLACED, worker_id=w)
            return Placement(outcome=Outcome.HELD, worker_id=w, held_attempt=a)
        for w in cands:
            uc, um = self.used(w)
            if uc + cpus <= self.caps[w][0] and um + mem <= self.caps[w][1]:
                self.records[job] = (w, cpus, mem, attempt)
                return Placement(outcome=Outcome.PLACED, worker_id=w)
        return Placement(outcome=Outcome.NO_ROOM)

    def release(self, job: int, attempt: int, worker: str) -> int:
        if job not in self.records:
            return 0
        w, _, _, a = self.records[job]
        if a != attempt:
            return -1
        if w != worker:
            return -2
        del self.records[job]
        return 1


async def check_invariants(alloc: Allocator, model: Model) -> None:
    records = await alloc.records()
    usage = await alloc.usage(list(WORKERS))
    cluster = await alloc.cluster_usage()
    for w, (cap_c, cap_m) in WORKERS.items():
        rows = [r for r in records.values() if r.worker_id == w]
        assert usage[w].cpus == sum(r.cpus for r in rows), f"{w} cpu counter drifted"
        assert usage[w].memory_mb == sum(r.memory_mb for r in rows), f"{w} mem counter drifted"
        assert usage[w].cpus <= cap_c, f"{w} over-committed: {usage[w].cpus} > {cap_c}"
        assert usage[w].memory_mb <= cap_m, f"{w} memory over-committed"
    assert cluster.cpus == sum(r.cpus for r in records.values())
    assert cluster.memory_mb == sum(r.memory_mb for r in records.values())
    assert {j: (r.worker_id, r.cpus, r.memory_mb, r.attempt) for j, r in records.items()} \
        == model.records


job_ids = st.integers(min_value=1, max_value=30)
attempts = st.integers(min_value=1, max_value=2)
candidates = st.lists(st.sampled_from(sorted(WORKERS)), min_size=1, max_size=4, unique=True)
alloc_op = st.tuples(st.just("alloc"), job_ids, attempts, st.integers(1, 12),
                     st.sampled_from([0, 0, 512, 2048, 6000]), candidates)
release_op = st.tuples(st.just("release"), job_ids, attempts,
                       st.sampled_from([*sorted(WORKERS), "owner", "owner", "owner"]))
ops = st.lists(st.one_of(alloc_op, release_op, st.just(("dup",))), min_size=50, max_size=250)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=ops)
async def test_random_operations_keep_every_invariant(
    redis: Redis, program: list[tuple[object, ...]]
) -> None:
    keys = Keys(f"{{p{uuid.uuid4().hex[:10]}}}:")
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys, membership.scripts)
    await open_epoch(redis, keys)
    for w, (c, m) in WORKERS.items():
        await add_worker(membership, w, cpus=c, memory_mb=m)
    model = Model(caps=dict(WORKERS))
    last: tuple[object, ...] | None = None
    try:
        for step in program:
            op = step
            if op[0] == "dup":
                if last is None:
                    continue
                op = last  # the same call again, as a retried command would be
            if op[0] == "alloc":
                _, job, attempt, cpus, mem, cands = op
                expected = model.allocate(job, attempt, cpus, mem, cands)  # type: ignore[arg-type]
                got = await alloc.allocate(job_id=job, attempt=attempt, cpus=cpus,  # type: ignore[arg-type]
                                           memory_mb=mem, candidates=cands)  # type: ignore[arg-type]
                assert got == expected, op
            else:
                _, job, attempt, worker = op
                if worker == "owner":
                    worker = model.records.get(job, ("w0",))[0]  # type: ignore[call-overload]
                    op = ("release", job, attempt, worker)
                expected_code = model.release(job, attempt, worker)  # type: ignore[arg-type]
                got_code = await alloc.release(job_id=job, attempt=attempt, worker_id=worker)  # type: ignore[arg-type]
                assert got_code == expected_code, op
            last = op
            OPS_RUN[0] += 1
            await check_invariants(alloc, model)
    finally:
        print(f"allocation property test: {OPS_RUN[0]} operations checked so far")
        await delete_prefix(redis, keys)


async def test_concurrent_allocations_never_over_commit(redis: Redis, keys: Keys) -> None:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await open_epoch(redis, keys)
    await add_worker(membership, "a", cpus=16, memory_mb=1 << 20)
    await add_worker(membership, "b", cpus=16, memory_mb=1 << 20)
    results = await asyncio.gather(*(
        alloc.allocate(job_id=j, attempt=1, cpus=3, memory_mb=0, candidates=["a", "b"])
        for j in range(1, 201)
    ))
    placed = [r for r in results if r.outcome is Outcome.PLACED]
    # 16 // 3 = 5 jobs fit per worker
    assert len(placed) == 10
    usage = await alloc.usage(["a", "b"])
    assert usage["a"].cpus == usage["b"].cpus == 15
    assert (await alloc.cluster_usage()).cpus == 30


async def test_only_ready_workers_with_a_lease_are_chosen(redis: Redis, keys: Keys) -> None:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await open_epoch(redis, keys)
    await add_worker(membership, "drained", cpus=8, memory_mb=1024)
    await add_worker(membership, "gone", cpus=8, memory_mb=1024)
    await add_worker(membership, "ok", cpus=8, memory_mb=1024)
    await membership.set_drain("drained", True)
    await redis.delete(keys.worker_lease("gone"))  # lease lapsed, not yet swept
    p = await alloc.allocate(job_id=1, attempt=1, cpus=1, memory_mb=0,
                             candidates=["drained", "gone", "unknown", "ok"])
    assert p == Placement(outcome=Outcome.PLACED, worker_id="ok")


async def test_a_held_older_attempt_blocks_a_new_one(redis: Redis, keys: Keys) -> None:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await open_epoch(redis, keys)
    await add_worker(membership, "w", cpus=8, memory_mb=1024)
    assert (await alloc.allocate(job_id=5, attempt=1, cpus=2, memory_mb=0,
                                 candidates=["w"])).outcome is Outcome.PLACED
    held = await alloc.allocate(job_id=5, attempt=2, cpus=2, memory_mb=0, candidates=["w"])
    assert held == Placement(outcome=Outcome.HELD, worker_id="w", held_attempt=1)
    assert await alloc.release(job_id=5, attempt=2, worker_id="w") == -1
    assert await alloc.release(job_id=5, attempt=1, worker_id="w") == 1
    assert await alloc.release(job_id=5, attempt=1, worker_id="w") == 0
    assert (await alloc.allocate(job_id=5, attempt=2, cpus=2, memory_mb=0,
                                 candidates=["w"])).outcome is Outcome.PLACED


async def test_scripts_survive_a_script_cache_flush(redis: Redis, keys: Keys) -> None:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await open_epoch(redis, keys)
    await add_worker(membership, "w", cpus=4, memory_mb=1024)
    await redis.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    p = await alloc.allocate(job_id=1, attempt=1, cpus=1, memory_mb=0, candidates=["w"])
    assert p.outcome is Outcome.PLACED


async def test_nothing_is_placed_until_the_records_are_rebuilt(redis: Redis, keys: Keys) -> None:
    """After a Redis restart the epoch is gone: allocate refuses until restore() reopens it,
    and restore rebuilds the records PostgreSQL knows about first."""
    from shared.allocation import AllocationRecord

    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await add_worker(membership, "w", cpus=8, memory_mb=1024)
    refused = await alloc.allocate(job_id=1, attempt=1, cpus=1, memory_mb=0, candidates=["w"])
    assert refused.outcome is Outcome.NOT_READY
    running = [AllocationRecord(job_id=7, worker_id="w", cpus=6, memory_mb=100, attempt=2)]
    assert await alloc.restore(running, epoch="e1") == 1
    assert await alloc.restore(running, epoch="e2") == -1  # a second replica: nothing to do
    assert (await alloc.usage(["w"]))["w"].cpus == 6
    # the restored job's capacity is respected: only 2 CPUs are left
    assert (await alloc.allocate(job_id=1, attempt=1, cpus=3, memory_mb=0,
                                 candidates=["w"])).outcome is Outcome.NO_ROOM
    assert (await alloc.allocate(job_id=1, attempt=1, cpus=2, memory_mb=0,
                                 candidates=["w"])).outcome is Outcome.PLACED


async def test_recount_repairs_drifted_counters(redis: Redis, keys: Keys) -> None:
    membership = Membership(redis, keys)
    alloc = Allocator(redis, keys)
    await open_epoch(redis, keys)
    await add_worker(membership, "a", cpus=8, memory_mb=1024)
    await add_worker(membership, "b", cpus=8, memory_mb=1024)
    await alloc.allocate(job_id=1, attempt=1, cpus=3, memory_mb=10, candidates=["a"])
    await alloc.allocate(job_id=2, attempt=1, cpus=2, memory_mb=0, candidates=["b"])
    assert await alloc.recount(["a", "b"]) == 0  # consistent: nothing written
    await redis.hset(keys.worker_alloc("a"), "cpus", 7)
    await redis.set(keys.allocated_cpus, 1)
    await redis.hset(keys.worker_alloc("ghost"), "cpus", 4)
    assert await alloc.recount(["a", "b", "ghost"]) == 3
    assert (await alloc.usage(["a", "b", "ghost"])) == {
        "a": Usage(cpus=3, memory_mb=10), "b": Usage(cpus=2, memory_mb=0),
        "ghost": Usage(cpus=0, memory_mb=0)}
    assert (await alloc.cluster_usage()).cpus == 5


async def test_record_running_ignores_capacity_but_not_duplicates(redis: Redis,
                                                                  keys: Keys) -> None:
    from shared.allocation import AllocationRecord

    alloc = Allocator(redis, keys)
    rec = AllocationRecord(job_id=3, worker_id="w", cpus=4, memory_mb=0, attempt=1)
    assert await alloc.record_running(rec) is True
    assert await alloc.record_running(rec) is False
    assert (await alloc.cluster_usage()).cpus == 4
