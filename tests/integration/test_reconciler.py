"""The reconciler in-process against real Redis and PostgreSQL: each repair, and no write at
all on a quiet, consistent system (checked with MONITOR and PostgreSQL row versions)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.reconciler.service import Reconciler
from services.scheduler.service import Scheduler
from shared.allocation import Allocator
from shared.db.jobs import JobSpec, JobStore
from shared.db.workers import WorkerStore
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore
from shared.membership import Membership
from shared.settings import Settings
from shared.states import JobState
from tests.helpers import add_worker, wire

WRITES = {"SET", "SETEX", "PSETEX", "DEL", "UNLINK", "HSET", "HDEL", "HINCRBY", "INCRBY",
          "DECRBY", "INCR", "SADD", "SREM", "ZADD", "ZREM", "XADD", "XACK", "XTRIM", "EXPIRE",
          "PEXPIRE", "EVAL", "EVALSHA", "FLUSHALL", "FLUSHDB", "PUBLISH"}


@dataclasses.dataclass
class World:
    settings: Settings
    redis: Redis
    keys: Keys
    pool: asyncpg.Pool[Any]
    reconciler: Reconciler
    scheduler: Scheduler
    jobs: JobStore


async def world(settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any],
                **overrides: Any) -> World:
    s = dataclasses.replace(settings, **{"repair_grace_s": 0.0, "node_fail_grace_s": 0.0,
                                         **overrides})
    wiring = wire(s, redis, pool)
    w = World(settings=s, redis=redis, keys=keys, pool=pool, reconciler=Reconciler(wiring),
              scheduler=Scheduler(wiring), jobs=JobStore(pool))
    membership = Membership(redis, keys)
    for wid in ("w1", "w2"):
        lease = await add_worker(membership, wid, cpus=4, memory_mb=4096)
        await WorkerStore(pool).joined(worker_id=wid, incarnation=lease.incarnation,
                                       hostname="h", state="ready", cpus=4, memory_mb=4096,
                                       labels={})
    first = await w.reconciler.run_pass()  # opens the allocation epoch
    assert first.notes and first.restored_records == 0
    return w


async def place(w: World, n: int, cpus: int = 1) -> list[int]:
    t = TransitionStore(w.pool)
    ids = [(await t.insert(JobSpec(script="true", cpus=cpus),  # type: ignore[union-attr]
                           idempotency_key=None)).id for _ in range(n)]
    await w.scheduler.run_pass()
    return ids


async def row_versions(pool: asyncpg.Pool[Any]) -> dict[str, list[Any]]:
    out = {}
    for table in ("jobs", "attempts", "workers"):
        out[table] = [tuple(r) for r in await pool.fetch(
            f"SELECT xmin::text, * FROM {table} ORDER BY 2")]
    return out


async def test_a_pass_on_a_quiet_consistent_system_writes_nothing(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any], infra: Any
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 6, cpus=2)  # 4 placed, 2 pending (no room)
    await TransitionStore(pool).start(ids[0], 1, "w1")  # one RUNNING, three ALLOCATED
    assert (await w.reconciler.run_pass()).total == 0
    before = await row_versions(pool)
    seen: list[str] = []
    monitor_client = Redis.from_url(infra.redis_url, decode_responses=True)
    ready = asyncio.Event()

    async def watch() -> None:
        async with monitor_client.monitor() as m:
            ready.set()
            async for info in m.listen():
                seen.append(info["command"])

    watcher = asyncio.create_task(watch())
    await ready.wait()
    await asyncio.sleep(0.1)
    report = await w.reconciler.run_pass()
    await asyncio.sleep(0.2)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await monitor_client.aclose()
    ours = [c for c in seen if keys.prefix in c or "arq:" in c]
    writes = [c for c in ours if c.split()[0].upper() in WRITES]
    assert report.total == 0, report
    assert len(ours) > 5, "MONITOR saw the pass's reads"
    assert writes == [], writes
    assert await row_versions(pool) == before


async def test_records_and_rows_are_repaired_both_ways(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 3)
    allocator = Allocator(redis, keys)
    # a record PostgreSQL does not hold (an ended job whose release was lost)
    await allocator.allocate(job_id=999, attempt=1, cpus=1, memory_mb=0, candidates=["w2"])
    # a row Redis lost (the scheduler died after its PostgreSQL write)
    rec = await allocator.record(ids[0])
    assert rec is not None
    await allocator.release(job_id=ids[0], attempt=1, worker_id=rec.worker_id)
    # a counter that drifted
    await redis.hincrby(keys.worker_alloc("w1"), "cpus", 2)
    report = await w.reconciler.run_pass()
    assert report.stale_records_released == 1
    assert report.records_recreated == 1
    assert report.counters_fixed >= 1
    records = await allocator.records()
    assert sorted(records) == sorted(ids)
    usage = await allocator.usage(["w1", "w2"])
    assert usage["w1"].cpus + usage["w2"].cpus == 3
    assert (await allocator.cluster_usage()).cpus == 3
    assert (await w.reconciler.run_pass()).total == 0


async def test_running_jobs_are_recorded_even_without_room(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 2, cpus=4)  # fills both workers
    for job_id in ids:
        job = await w.jobs.get(job_id)
        assert job is not None and job.worker_id
        await TransitionStore(pool).start(job_id, 1, job.worker_id)
    await redis.delete(keys.allocations)
    await redis.delete(keys.worker_alloc("w1"), keys.worker_alloc("w2"))
    await redis.set(keys.allocated_cpus, 0)
    # meanwhile something else took w1's capacity (the counters were empty)
    allocator = Allocator(redis, keys)
    await allocator.allocate(job_id=12345, attempt=1, cpus=4, memory_mb=0, candidates=["w1"])
    report = await w.reconciler.run_pass()
    assert report.running_recorded == 2
    assert report.stale_records_released == 1


async def test_jobs_on_a_lost_worker(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 8)  # 4 on each worker
    on_w1 = [j for j in ids if (await w.jobs.get(j)).worker_id == "w1"]  # type: ignore[union-attr]
    running, requeued, waiting = on_w1[0], on_w1[1], on_w1[2:]
    await TransitionStore(pool).start(running, 1, "w1")
    await pool.execute("UPDATE jobs SET requeue = true WHERE id = $1", requeued)
    await TransitionStore(pool).start(requeued, 1, "w1")
    # the registry declares w1 gone
    member = await Membership(redis, keys).member("w1")
    assert member is not None
    await redis.delete(keys.worker_lease("w1"))
    await Membership(redis, keys).leave(member, reason="expired", now_ms=0)
    await WorkerStore(pool).left(worker_id="w1", incarnation=member.incarnation,
                                 reason="expired", mark=0)
    report = await w.reconciler.run_pass()
    assert report.node_failed == 2 and report.requeued == 1
    assert report.handed_back_lost_worker == len(waiting)
    assert (await w.jobs.get(running)).state is JobState.NODE_FAIL  # type: ignore[union-attr]
    again = await w.jobs.get(requeued)
    assert again is not None and again.state is JobState.PENDING and again.attempt == 2
    for j in waiting:
        back = await w.jobs.get(j)
        assert back is not None and back.state is JobState.PENDING and back.attempt == 1
    usage = await Allocator(redis, keys).usage(["w1"])
    assert usage["w1"].cpus == 0
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE released_at IS NULL "
                               "AND worker_id = 'w1'") == 0


async def test_a_vanished_launch_is_enqueued_again(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 2)
    gone = ids[0]
    job = await w.jobs.get(gone)
    assert job is not None and job.worker_id
    arq_id = keys.arq_job_id(gone, 1)
    await redis.delete(f"arq:job:{arq_id}")
    await redis.zrem(keys.arq_queue(job.worker_id), arq_id)
    report = await w.reconciler.run_pass()
    assert report.reenqueued == 1
    assert await redis.exists(f"arq:job:{arq_id}")
    assert (await w.reconciler.run_pass()).reenqueued == 0


async def test_rebuild_after_redis_lost_everything(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    w = await world(settings, redis, keys, pool)
    ids = await place(w, 5)
    before = await Allocator(redis, keys).records()
    await redis.delete(*[k async for k in redis.scan_iter(match=keys.pattern())])
    assert (await w.scheduler.run_pass()).placed == 0  # paused: the epoch is gone
    report = await w.reconciler.run_pass()
    assert report.restored_records == 5
    assert await Allocator(redis, keys).records() == before
    assert sorted(before) == sorted(ids)


async def test_only_one_reconciler_replica_acts_at_a_time(database_url: str) -> None:
    from shared.leader import RECONCILER_LOCK_ID, Leadership

    a = Leadership(database_url, lock_id=RECONCILER_LOCK_ID, name="reconciler")
    b = Leadership(database_url, lock_id=RECONCILER_LOCK_ID, name="reconciler")
    try:
        assert await a.check() is True
        assert await b.check() is False
        assert await a.check() is True  # confirmed, still held
        await a.close()  # the holder dies: its session ends, the lock frees at once
        assert await b.check() is True
    finally:
        await a.close()
        await b.close()


async def _declare_gone(w: World, wid: str, *, mark: int) -> str:
    """The registry's two steps for a lapsed lease: the departure in Redis (stamped `mark`),
    then in PostgreSQL (at PostgreSQL's now(), named by `mark`). Returns the incarnation."""
    membership = Membership(w.redis, w.keys)
    member = await membership.member(wid)
    assert member is not None
    await w.redis.delete(w.keys.worker_lease(wid))
    assert await membership.leave(member, reason="expired", now_ms=mark) is not None
    await WorkerStore(w.pool).left(worker_id=wid, incarnation=member.incarnation,
                                   reason="expired", mark=mark)
    return member.incarnation


async def _running_on_w1(w: World) -> int:
    ids = await place(w, 8)
    on_w1 = [j for j in ids if (await w.jobs.get(j)).worker_id == "w1"]  # type: ignore[union-attr]
    job_id = on_w1[0]
    assert await TransitionStore(w.pool).start(job_id, 1, "w1") is not None
    return job_id


async def test_a_worker_renewing_its_lease_again_is_not_judged_lost(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    """A partition healed: the worker's heartbeat re-created its lease, but the registry has
    not recorded its return yet (PostgreSQL still has it down past the grace). Redis is read
    after PostgreSQL, and a lease being renewed means its jobs still run there: spared. Once
    the lease is gone again, they are NODE_FAIL."""
    w = await world(settings, redis, keys, pool)
    job_id = await _running_on_w1(w)
    incarnation = await _declare_gone(w, "w1", mark=1_000)
    await Membership(redis, keys).heartbeat(
        worker_id="w1", incarnation=incarnation, hostname="h", cpus=4, memory_mb=4096,
        labels={}, ttl_ms=60_000, now_ms=2_000)
    report = await w.reconciler.run_pass()
    assert report.node_failed == 0
    assert (await w.jobs.get(job_id)).state is JobState.RUNNING  # type: ignore[union-attr]

    await redis.delete(keys.worker_lease("w1"))  # it lapsed again: gone
    report = await w.reconciler.run_pass()
    assert report.node_failed == 1
    assert (await w.jobs.get(job_id)).state is JobState.NODE_FAIL  # type: ignore[union-attr]


async def test_a_departure_postgresql_has_not_recorded_yet_restarts_the_grace(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
) -> None:
    """The worker left (recorded), came back and left again while the registry could not
    write to PostgreSQL: PostgreSQL's left_at is the first departure's, older than the
    worker's latest renewal. The reconciler sees Redis name another departure and waits for
    PostgreSQL to record it (at its own now(), restarting the grace)."""
    w = await world(settings, redis, keys, pool, node_fail_grace_s=3600.0)
    job_id = await _running_on_w1(w)
    incarnation = await _declare_gone(w, "w1", mark=1_000)
    # the first departure is long past its grace
    await pool.execute("UPDATE workers SET left_at = now() - interval '2 hours' "
                       "WHERE id = 'w1'")
    # back (Redis only), then gone again (Redis only: PostgreSQL missed both)
    membership = Membership(redis, keys)
    lease = await add_worker(membership, "w1", cpus=4, memory_mb=4096)
    assert lease.incarnation == incarnation
    member = await membership.member("w1")
    assert member is not None and member.live
    await redis.delete(keys.worker_lease("w1"))
    assert await membership.leave(member, reason="expired", now_ms=5_000) is not None

    report = await w.reconciler.run_pass()
    assert report.node_failed == 0
    assert (await w.jobs.get(job_id)).state is JobState.RUNNING  # type: ignore[union-attr]

    # the registry's sync records the second departure: now(), so the grace starts again
    await WorkerStore(pool).left(worker_id="w1", incarnation=incarnation, reason="expired",
                                 mark=5_000)
    fresh = await pool.fetchval("SELECT now() - left_at < interval '1 minute' FROM workers "
                                "WHERE id = 'w1'")
    assert fresh is True
    assert (await w.reconciler.run_pass()).node_failed == 0  # within the (hour's) grace
    # repeating the same departure (the periodic sync) does not move it
    before = await pool.fetchval("SELECT left_at FROM workers WHERE id = 'w1'")
    await WorkerStore(pool).left(worker_id="w1", incarnation=incarnation, reason="expired",
                                 mark=5_000)
    assert await pool.fetchval("SELECT left_at FROM workers WHERE id = 'w1'") == before
    await pool.execute("UPDATE workers SET left_at = now() - interval '2 hours' "
                       "WHERE id = 'w1'")
    assert (await w.reconciler.run_pass()).node_failed == 1
