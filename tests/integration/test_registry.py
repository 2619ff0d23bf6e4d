"""The registry in-process: every membership change announced once, PostgreSQL kept in step."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.registry.service import Registry
from shared import clock, heartbeat
from shared.capacity import Capacity
from shared.db.workers import WorkerStore
from shared.errors import WorkerIdConflict
from shared.events import WorkerJoined, WorkerLeft, decode
from shared.heartbeat import HeartbeatClient
from shared.keys import Keys
from shared.membership import Membership
from shared.redis import aw
from shared.settings import Settings
from tests.helpers import Clock, wait_for, wire


async def events(redis: Redis, keys: Keys, type_: str) -> list[Any]:
    return [decode(f["e"]) for _, f in await redis.xrange(keys.stream(type_))]


def client(membership: Membership, wid: str, *, cpus: int = 4, host: str | None = None,
           ttl_s: float = 60.0) -> HeartbeatClient:
    """A worker's heartbeat client. Its lease outlives any stall of the test: a test that needs
    it to lapse says when (`lapse`), rather than racing a short TTL."""
    return HeartbeatClient(membership, worker_id=wid, capacity=Capacity(cpus=cpus, memory_mb=512),
                           labels={"arch": "test"}, heartbeat_s=0.5, ttl_s=ttl_s,
                           hostname=host or f"host-{wid}")


async def lapse(hb: HeartbeatClient, redis: Redis, keys: Keys) -> None:
    """The worker's last heartbeat, then silence: it renews its live lease with a short TTL and
    beats no more. Returns once Redis has let the lease lapse: waited for, not slept, so the
    sweeps before this call certainly saw the lease and the sweeps after it certainly do not."""
    hb.ttl_s = 0.3
    assert await hb.beat() == 1  # the same live lease, renewed one last time
    lease = keys.worker_lease(hb.worker_id)

    async def lapsed() -> bool:
        return not await redis.exists(lease)

    await wait_for(lapsed, timeout=10, what=f"the lease of {hb.worker_id} to lapse")


async def test_join_then_shutdown(redis: Redis, keys: Keys, settings: Settings,
                                  pool: asyncpg.Pool[Any]) -> None:
    reg = Registry(wire(settings, redis, pool))
    hb = client(reg.membership, "n1", cpus=6)
    await hb.register()
    r = await reg.sweep()
    assert r.joined == ["n1"]
    joined = await events(redis, keys, WorkerJoined.TYPE)
    assert len(joined) == 1 and joined[0].cpus == 6 and joined[0].labels == {"arch": "test"}
    assert await redis.get(keys.total_cpus) == "6"
    row = await WorkerStore(pool).get("n1")
    assert row is not None and row.state == "ready" and row.cpus == 6
    assert (await reg.sweep()).joined == []  # nothing new

    await hb.deregister()
    r = await reg.sweep()
    assert r.left == [("n1", "shutdown")]
    left = await events(redis, keys, WorkerLeft.TYPE)
    assert [(e.worker_id, e.reason) for e in left] == [("n1", "shutdown")]
    assert await redis.get(keys.total_cpus) == "0"
    row = await WorkerStore(pool).get("n1")
    assert row is not None and row.state == "down" and row.left_reason == "shutdown"
    assert not await redis.exists(keys.worker_lease("n1"))


async def test_a_lapsed_lease_is_announced_as_expired(redis: Redis, keys: Keys,
                                                      settings: Settings,
                                                      pool: asyncpg.Pool[Any]) -> None:
    reg = Registry(wire(settings, redis, pool))
    hb = client(reg.membership, "n2")
    await hb.register()
    assert (await reg.sweep()).joined == ["n2"]
    await lapse(hb, redis, keys)  # no more heartbeats: the lease expires
    r = await reg.sweep()
    assert r.left == [("n2", "expired")]
    r = await reg.sweep()
    assert r.left == [] and r.joined == []
    assert await aw(redis.sismember(keys.workers_known, "n2")) == 0


async def test_a_restarted_executor_is_a_new_incarnation(redis: Redis, keys: Keys,
                                                         settings: Settings,
                                                         pool: asyncpg.Pool[Any]) -> None:
    reg = Registry(wire(settings, redis, pool))
    first = client(reg.membership, "n3", host="same")
    await first.register()
    await reg.sweep()
    second = client(reg.membership, "n3", host="same")  # SIGKILLed and restarted at once
    await second.register()
    r = await reg.sweep()
    assert r.left == [("n3", "restarted")] and r.joined == ["n3"]
    joined = await events(redis, keys, WorkerJoined.TYPE)
    assert [e.incarnation for e in joined] == [first.incarnation, second.incarnation]
    assert await redis.get(keys.total_cpus) == "4"


async def test_another_host_cannot_take_a_live_worker_id(redis: Redis, keys: Keys) -> None:
    m = Membership(redis, keys)
    await client(m, "n4", host="a").register()
    intruder = client(m, "n4", host="b")
    with pytest.raises(WorkerIdConflict, match="held by a live process on another host"):
        await intruder.register()


async def test_two_replicas_racing_announce_each_change_once(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    regs = [Registry(wire(settings, redis, pool)) for _ in range(3)]
    clients = [client(regs[0].membership, f"r{i}") for i in range(10)]
    for c in clients:
        await c.register()
    await asyncio.gather(*(r.sweep() for r in regs for _ in range(3)))
    for c in clients[:5]:
        await c.deregister()
    await asyncio.gather(*(lapse(c, redis, keys) for c in clients[5:]))  # the other five expire
    await asyncio.gather(*(r.sweep() for r in regs for _ in range(3)))
    joined = await events(redis, keys, WorkerJoined.TYPE)
    left = await events(redis, keys, WorkerLeft.TYPE)
    assert sorted(e.worker_id for e in joined) == sorted(f"r{i}" for i in range(10))
    assert sorted((e.worker_id, e.reason) for e in left) == sorted(
        [(f"r{i}", "shutdown") for i in range(5)] + [(f"r{i}", "expired") for i in range(5, 10)])
    assert await redis.get(keys.total_cpus) == "0"


async def test_drain_survives_a_restart_and_resume_clears_it(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    reg = Registry(wire(settings, redis, pool))
    hb = client(reg.membership, "n5", host="h5")
    await hb.register()
    await reg.sweep()
    assert await reg.membership.set_drain("n5", True) == "draining"
    await hb.deregister()
    await reg.sweep()
    again = client(reg.membership, "n5", host="h5")
    await again.register()
    await reg.sweep()
    members = {m.worker_id: m for m in await reg.membership.live_members()}
    assert members["n5"].state == "draining"
    assert await reg.membership.set_drain("n5", False) == "ready"
    await reg.sync_db()
    row = await WorkerStore(pool).get("n5")
    assert row is not None and row.state == "ready" and not row.drain


async def test_sync_repairs_postgres_after_a_missed_write(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    """The registry crashed between the Redis announcement and the PostgreSQL write."""
    membership = Membership(redis, keys)
    hb = client(membership, "n6")
    await hb.register()
    lease = (await membership.observe())[0].lease
    assert lease is not None
    status, _ = await membership.join(lease, now_ms=int(time.time() * 1000))
    assert status == 1
    assert await WorkerStore(pool).get("n6") is None
    reg = Registry(wire(settings, redis, pool))
    await reg.sync_db()
    row = await WorkerStore(pool).get("n6")
    assert row is not None and row.state == "ready" and row.last_heartbeat is not None


async def test_a_worker_redis_forgot_while_it_was_gone_is_recorded_lost(
        redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any]) -> None:
    """Redis lost everything (a restart without persistence) while a worker was gone: no lease
    will ever lapse for it, so the registry's sync downs it from PostgreSQL's record alone,
    once it has not heartbeaten for a TTL and a heartbeat; the reconciler's grace follows."""
    reg = Registry(wire(settings, redis, pool))
    store = WorkerStore(pool)
    ttl = settings.worker_ttl_s + settings.heartbeat_s
    for wid, silent_s in (("gone", ttl + 30), ("just-quiet", 0.0)):
        await pool.execute(
            "INSERT INTO workers (id, incarnation, hostname, state, cpus, memory_mb, "
            "joined_at, last_heartbeat) VALUES ($1, 'i1', 'h', 'ready', 4, 512, "
            "now() - interval '1 hour', now() - make_interval(secs => $2))", wid, silent_s)
    hb = client(reg.membership, "alive")
    await hb.register()
    await reg.sweep()
    await pool.execute("UPDATE workers SET last_heartbeat = now() - interval '1 hour' "
                       "WHERE id = 'alive'")  # a stale record, but Redis knows it: untouched

    await reg.sync_db()
    gone, quiet, alive = [await store.get(w) for w in ("gone", "just-quiet", "alive")]
    assert gone is not None and (gone.state, gone.left_reason) == ("down", "lost")
    assert quiet is not None and quiet.state == "ready"  # within the TTL: maybe on its way back
    assert alive is not None and alive.state == "ready"
    left_at = gone.left_at
    await reg.sync_db()  # idempotent: written once
    again = await store.get("gone")
    assert again is not None and again.left_at == left_at

    # it comes back: it simply joins again
    back = client(reg.membership, "gone")
    await back.register()
    assert (await reg.sweep()).joined == ["gone"]
    row = await store.get("gone")
    assert row is not None and row.state == "ready" and row.left_at is None


async def test_postgresql_records_membership_times_on_its_own_clock(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    """A registry whose clock is an hour behind (and the worker's too) still records joins,
    heartbeats and departures at PostgreSQL's now(): the reconciler compares them with
    PostgreSQL's now(), and an hour-old left_at would fail the worker's jobs at once."""
    clock.configure(-3600.0)
    try:
        reg = Registry(wire(settings, redis, pool))
        hb = client(reg.membership, "skewed")
        await hb.register()
        assert (await reg.sweep()).joined == ["skewed"]
        await reg.sync_db()
        ages = await pool.fetchrow(
            "SELECT extract(epoch FROM now() - joined_at) AS joined, "
            "extract(epoch FROM now() - last_heartbeat) AS beat FROM workers WHERE id = $1",
            "skewed")
        assert ages is not None and abs(ages["joined"]) < 60 and abs(ages["beat"]) < 60
        await lapse(hb, redis, keys)  # no more heartbeats: the lease expires
        assert (await reg.sweep()).left == [("skewed", "expired")]
        age = await pool.fetchval("SELECT extract(epoch FROM now() - left_at) FROM workers "
                                  "WHERE id = $1", "skewed")
        assert age is not None and abs(age) < 60
        # the periodic sync writes the same departure again: left_at does not move
        before = await pool.fetchval("SELECT left_at FROM workers WHERE id = $1", "skewed")
        await reg.sync_db()
        assert await pool.fetchval("SELECT left_at FROM workers WHERE id = $1",
                                   "skewed") == before
    finally:
        clock.configure(0.0)


async def test_a_lease_is_held_without_a_break_only_between_renewals_within_the_ttl(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a monotonic clock moved by hand: each renewal's round trip takes 0.01 s of it and
    nothing else moves it, so how long the test really takes decides nothing."""
    now = Clock()
    monkeypatch.setattr(heartbeat, "time", SimpleNamespace(monotonic=now))

    class RoundTrip(Membership):
        async def heartbeat(self, **kwargs: Any) -> int:
            answer = await super().heartbeat(**kwargs)
            now.now += 0.01  # the answer comes back 0.01 s after the request went out
            return answer

    hb = client(RoundTrip(redis, keys), "held", ttl_s=0.3)
    before = now()
    await hb.register()
    assert not hb.lease_held_since(before)  # held from the first renewal's answer on
    since = now()
    assert hb.lease_held_since(since)
    now.now += 0.2
    await hb.beat()  # renewed well within the TTL: no break
    assert hb.lease_held_since(since)
    now.now += 0.4  # longer than the TTL without a renewal: it may have lapsed
    assert not hb.lease_held_since(since)
    await hb.beat()
    assert not hb.lease_held_since(since)  # renewed, but after a possible lapse
    assert hb.lease_held_since(now())
