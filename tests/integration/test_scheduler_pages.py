"""A pass over many pages, on a real PostgreSQL and Redis: each page is committed while the
next is read and planned, and what the pass places is what placing page after page in turn
would (the best fit, users' CPU limits, no worker over its capacity), also when Redis refuses
placements made on a stale snapshot."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.scheduler.service import Scheduler
from shared.allocation import AllocationRecord
from shared.keys import Keys
from shared.membership import Membership
from shared.placement import Node
from shared.wiring import Wiring
from tests.helpers import add_worker
from tests.integration.conftest import bearer
from tests.integration.test_partitions import admin, call, held_cpus, submit

Http = TestClient[Any, Any]
WORKERS = {"big": 8, **{f"w{i}": 4 for i in range(6)}}  # "big" comes with the gateway


def paged(wiring: Wiring, batch: int) -> Scheduler:
    return Scheduler(replace(wiring, settings=replace(wiring.settings, scheduler_batch=batch)))


async def consistent(wiring: Wiring, pool: asyncpg.Pool[Any]) -> dict[str, int]:
    """PostgreSQL's placements are Redis's records, and no worker holds more than it has;
    returns the CPUs allocated on each worker."""
    rows = await pool.fetch("SELECT id, attempt, worker_id, cpus FROM jobs "
                            "WHERE state = 'ALLOCATED'")
    records = await wiring.allocator.records()
    assert {r["id"]: (r["worker_id"], r["attempt"]) for r in rows} == {
        j: (r.worker_id, r.attempt) for j, r in records.items() if j > 0}
    usage = await wiring.allocator.usage(list(WORKERS))
    for w, cpus in WORKERS.items():
        assert usage[w].cpus <= cpus
    return {w: sum(r["cpus"] for r in rows if r["worker_id"] == w) for w in WORKERS}


async def test_many_pages_fill_the_cluster_within_each_users_limit(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any], redis: Redis, keys: Keys) -> None:
    m = Membership(redis, keys)
    for w, cpus in WORKERS.items():
        if w != "big":
            await add_worker(m, w, cpus=cpus, memory_mb=4096)
    await call(http, "PUT", "/users/ann/limits", status=200, headers=await admin(pool),
               json={"max_running_cpus": 13})
    await submit(http, array="0-99")
    bob = await bearer(pool, "bob")
    await submit(http, array="0-29", headers=bob)
    await submit(http, array="0-4", cpus=3, headers=bob)
    result = await paged(wiring, 4).run_pass()  # pages of 4 per group: several commits
    assert result.rolled_back == 0
    assert await held_cpus(pool, "ann") == 13  # her limit, drawn across pages
    assert await held_cpus(pool, "bob") == sum(WORKERS.values()) - 13
    assert result.placed == await pool.fetchval(
        "SELECT count(*) FROM jobs WHERE state = 'ALLOCATED'")
    assert sum((await consistent(wiring, pool)).values()) == sum(WORKERS.values())
    pending = await pool.fetch("SELECT DISTINCT reason FROM jobs WHERE state = 'PENDING' "
                               "AND user_name = 'ann'")
    assert {r["reason"] for r in pending} <= {"QOSMaxCpuPerUserLimit", "Priority", None}


async def test_placements_refused_on_a_stale_snapshot_are_placed_elsewhere(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any], redis: Redis, keys: Keys) -> None:
    """The pass's snapshot shows w0 empty, but its 4 CPUs were taken meanwhile: the pages
    planned onto it are refused by Redis and go back to PENDING, their user's budget is given
    back, and later pages go to "big" on a snapshot read again."""
    await add_worker(Membership(redis, keys), "w0", cpus=4, memory_mb=4096)
    await call(http, "PUT", "/users/ann/limits", status=200, headers=await admin(pool),
               json={"max_running_cpus": 6})
    await submit(http, array="0-39")
    sched = paged(wiring, 2)
    real = sched.nodes
    reads = 0

    async def stale() -> tuple[list[Node], dict[str, Any]]:
        nonlocal reads
        nodes, labels = await real()
        reads += 1
        if reads == 1:  # taken behind the snapshot's back
            assert await wiring.allocator.record_running(AllocationRecord(
                job_id=-1, worker_id="w0", cpus=4, memory_mb=0, attempt=1))
        return nodes, labels

    sched.nodes = stale  # type: ignore[method-assign]
    first = await sched.run_pass()
    assert first.rolled_back >= 2 and reads >= 2  # the snapshot was read again
    # the refused jobs' CPUs were given back to ann's budget: her 6 are placed, on "big"
    assert first.placed == 6 and await held_cpus(pool, "ann") == 6
    placed = await consistent(wiring, pool)
    assert placed["w0"] == 0 and placed["big"] == 6
    refused = await pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'PENDING' "
                                  "AND reason = 'Resources'")
    assert refused == first.rolled_back  # back in the queue, for the next pass
