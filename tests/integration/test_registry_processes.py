"""Acceptance: the registry and heartbeat clients as real processes, two registry replicas."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from shared.db.workers import WorkerStore
from shared.events import WorkerJoined, WorkerLeft, decode
from shared.keys import Keys
from shared.localinfra import free_port
from shared.settings import Settings
from tests.helpers import wait_for
from tests.procs import running, start_service


async def stream_events(redis: Redis, keys: Keys, type_: str) -> list[Any]:
    return [decode(f["e"]) for _, f in await redis.xrange(keys.stream(type_))]


async def sweeps(port: int) -> int:
    """How many sweeps the registry with health port `port` has completed (its /metrics)."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^scns_registry_sweep_seconds_count (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return int(float(found.group(1)))


async def serving(port: int) -> bool:
    try:
        await sweeps(port)
    except aiohttp.ClientError:  # not listening yet
        return False
    return True


async def a_whole_sweep(port: int) -> None:
    """Returns once the registry with health port `port` has completed a whole sweep that began
    after this call: the one under way (if any) ends as `first + 1`, the next began after it."""
    first = await sweeps(port)

    async def swept() -> bool:
        return await sweeps(port) >= first + 2

    await wait_for(swept, timeout=30, what="a whole sweep of registry 0")


async def lease_state(redis: Redis, keys: Keys, worker_id: str) -> tuple[int | None, int]:
    """The lease's heartbeat_at (None once it is gone) and its time to live in ms, read at once."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(keys.worker_lease(worker_id), "heartbeat_at")
        pipe.pttl(keys.worker_lease(worker_id))
        beat, pttl = await pipe.execute()
    return (None if beat is None else int(beat)), int(pttl)


@pytest.mark.slow
async def test_registry_processes_announce_joins_and_departures_once(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    ttl, beat_s = settings.worker_ttl_s, settings.heartbeat_s
    health_port = free_port()
    regs = [start_service(f"registry-{i}", "services.registry", settings, tmp_path,
                          SCNS_HEALTH_PORT=str(health_port if i == 0 else 0))
            for i in range(2)]
    clients = [start_service(f"hb-{w}", "shared.heartbeat", settings, tmp_path,
                             SCNS_WORKER_ID=f"hb-{w}", SCNS_WORKER_CPUS="3")
               for w in ("a", "b")]
    with running(regs + clients):
        async def both_joined() -> bool:
            return len(await stream_events(redis, keys, WorkerJoined.TYPE)) >= 2

        took = await wait_for(both_joined, timeout=30, what="both worker-joined events")
        print(f"both joined {took:.2f}s after start")
        # registry 1 alone may have announced them: registry 0's sweeps are counted below
        await wait_for(lambda: serving(health_port), timeout=30, what="registry 0's /metrics")

        async def left(reason: str) -> bool:
            return any(e.reason == reason for e in await stream_events(redis, keys,
                                                                      WorkerLeft.TYPE))

        async def departure(worker_id: str) -> Any:
            [event] = [e for e in await stream_events(redis, keys, WorkerLeft.TYPE)
                       if e.worker_id == worker_id]
            return event

        # Each departure is checked against times the system records itself (the event's
        # occurred_at is the registry's clock when it announced, the lease's heartbeat_at the
        # worker's), and its promptness by counting registry 0's sweeps: how long this test
        # takes to look decides nothing.
        term_at = time.time()
        clients[0].signal(signal.SIGTERM)
        assert clients[0].wait(10) == 0  # it marked its lease `bye` before exiting
        await a_whole_sweep(health_port)  # the first whole sweep after the goodbye announces it
        assert await left("shutdown")
        shutdown = await departure("hb-a")
        assert shutdown.reason == "shutdown"
        shutdown_s = shutdown.occurred_at - term_at
        print(f"SIGTERM -> worker-left(shutdown) announced after {shutdown_s:.3f}s (limit 2s)")
        assert 0 <= shutdown_s <= 2.0

        first_beat, _ = await lease_state(redis, keys, "hb-b")
        assert first_beat is not None  # alive until now
        last_beat_ms = first_beat
        kill_at = time.time()
        clients[1].signal(signal.SIGKILL)
        assert clients[1].wait(10) == -signal.SIGKILL

        async def lapsed() -> bool:
            nonlocal last_beat_ms
            beat, pttl = await lease_state(redis, keys, "hb-b")
            if beat is None:
                return True
            last_beat_ms = max(last_beat_ms, beat)  # a renewal sent before the kill may land
            assert 0 <= pttl <= ttl * 1000  # it lapses within the TTL of its last renewal
            return False

        await wait_for(lapsed, timeout=30, what="the lease of the killed worker to lapse")
        await a_whole_sweep(health_port)  # the first whole sweep after the lapse announces it
        assert await left("expired")
        expired = await departure("hb-b")
        assert expired.reason == "expired"
        expired_s = expired.occurred_at - kill_at
        print(f"SIGKILL -> worker-left(expired) announced after {expired_s:.3f}s, "
              f"{expired.occurred_at - last_beat_ms / 1000:.3f}s after its last heartbeat "
              f"(TTL {ttl:g}s, heartbeat {beat_s:g}s)")
        # never before the lease could have lapsed: exact, whatever the machine's speed
        assert expired.occurred_at * 1000 >= last_beat_ms + ttl * 1000
        # a backstop only a real bug would break (what proves promptness is the sweep count)
        assert expired_s <= ttl + beat_s + 5.0

        # let both replicas sweep a few more times: nothing may be announced twice
        await asyncio.sleep(1.0)
        await a_whole_sweep(health_port)  # registry 0 certainly did
        joined = await stream_events(redis, keys, WorkerJoined.TYPE)
        left_events = await stream_events(redis, keys, WorkerLeft.TYPE)
        assert sorted(e.worker_id for e in joined) == ["hb-a", "hb-b"]
        assert sorted((e.worker_id, e.reason) for e in left_events) == [
            ("hb-a", "shutdown"), ("hb-b", "expired")]
        assert len({e.event_id for e in joined + left_events}) == 4
        for r in regs:
            assert r.popen.poll() is None, r.output()

        async with aiohttp.ClientSession(f"http://127.0.0.1:{health_port}") as http:
            async with http.get("/healthz") as resp:
                assert resp.status == 200
            async with http.get("/readyz") as resp:
                body = await resp.json()
                assert resp.status == 200
                assert body == {"ready": True, "checks": {"redis": True, "postgresql": True}}
            async with http.get("/metrics") as resp:
                text = await resp.text()
                # either replica may have announced a change; both sweep and export gauges
                assert "scns_registry_sweep_seconds_count" in text
                assert "scns_registry_live_workers 0.0" in text

        rows = {w.id: w for w in await WorkerStore(pool).list()}
        assert rows["hb-a"].state == "down" and rows["hb-a"].left_reason == "shutdown"
        assert rows["hb-b"].state == "down" and rows["hb-b"].left_reason == "expired"
        assert rows["hb-a"].cpus == 3
