"""Acceptance: the registry and heartbeat clients as real processes, two registry replicas."""

from __future__ import annotations

import asyncio
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


@pytest.mark.slow
async def test_registry_processes_announce_joins_and_departures_once(
    redis: Redis, keys: Keys, settings: Settings, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    ttl, beat = settings.worker_ttl_s, settings.heartbeat_s
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

        async def left(reason: str) -> bool:
            return any(e.reason == reason for e in await stream_events(redis, keys,
                                                                      WorkerLeft.TYPE))

        t0 = time.monotonic()
        clients[0].signal(signal.SIGTERM)
        shutdown_s = await wait_for(lambda: left("shutdown"), timeout=10,
                                    what="worker-left (shutdown)")
        assert clients[0].wait(5) == 0
        print(f"SIGTERM -> worker-left(shutdown) in {shutdown_s:.2f}s (limit 2s)")
        assert shutdown_s <= 2.0

        t0 = time.monotonic()
        clients[1].signal(signal.SIGKILL)
        expired_s = await wait_for(lambda: left("expired"), timeout=30,
                                   what="worker-left (expired)")
        print(f"SIGKILL -> worker-left(expired) in {expired_s:.2f}s "
              f"(limit TTL {ttl:g}s + heartbeat {beat:g}s)")
        assert expired_s <= ttl + beat
        del t0

        # let both replicas sweep a few more times: nothing may be announced twice
        await asyncio.sleep(1.0)
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
