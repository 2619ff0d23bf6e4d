"""The gateway's /metrics (in-process aiohttp, real Redis and PostgreSQL): the cluster gauges
count what is there, scrapes share refreshes, and an outage of either store leaves out that
store's gauges only. And the executor's job histograms: one observation per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from services.executor.environment import base_environment
from services.executor.output import JobOutputShipper
from services.executor.runner import Runner
from services.gateway import auth
from services.gateway.app import create_app
from services.gateway.common import Principal
from services.gateway.metrics import CLUSTER
from shared.bus import StreamBus
from shared.db.jobs import JobSpec
from shared.db.pool import create_pool
from shared.db.tokens import TokenStore
from shared.db.workers import WorkerStore
from shared.events import JobSubmitted
from shared.keys import Keys
from shared.lifecycle import Role
from shared.membership import Membership
from shared.redis import connect
from shared.settings import Settings
from shared.states import JobState, PendingReason
from shared.wiring import Wiring
from tests.helpers import Clock, add_worker, open_for_jobs, wire

Http = TestClient[Any, Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
JOB_GAUGES = ("scns_jobs_pending", "scns_jobs_pending_cpus", "scns_jobs_allocated",
              "scns_jobs_running", "scns_running_cpus")
REDIS_GAUGES = ("scns_workers", "scns_stream_group_lag", "scns_stream_group_pending",
                "scns_stream_group_oldest_pending_seconds", "scns_stream_group_consumers")


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """One metric's values keyed by one label."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


async def scrape(client: Http) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    return parse(await resp.text())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(CLUSTER, "clock", c)
    return c


async def submit(http: Http, **fields: Any) -> dict[str, Any]:
    resp = await http.post("/api/v1/jobs", json={"script": "true", **fields})
    assert resp.status == 201, await resp.text()
    job: dict[str, Any] = await resp.json()
    return job


async def test_gauges_count_the_queue_the_workers_and_a_groups_lag(
    http: Http, wiring: Wiring, pool: asyncpg.Pool[Any], redis: Redis, keys: Keys
) -> None:
    lc = wiring.lifecycle
    first = await submit(http, cpus=2)
    await submit(http, cpus=2)  # Priority: these two, 4 CPUs ...
    await submit(http, cpus=1, array="0-2%1")  # ... and this array's first element (1 CPU)
    await submit(http, cpus=3, hold=True)
    await submit(http, cpus=1, dependency=f"afterok:{first['id']}")
    await submit(http, cpus=4, begin_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    starved = await submit(http, cpus=6)
    await lc.set_reasons({starved["id"]: PendingReason.RESOURCES})
    allocated, running = await submit(http, cpus=1), await submit(http, cpus=2)
    placed = await lc.place([(allocated["id"], 1, "big"), (running["id"], 1, "big")])
    assert len(placed.placed) == 2
    assert await lc.start(running["id"], 1, "big") is not None

    # workers: "big" ready; "spare" draining; "gone" down (its record only in PostgreSQL, as
    # after the registry retired it); a stale PostgreSQL row does not outvote the registry
    membership = Membership(redis, keys)
    await add_worker(membership, "spare", cpus=4, memory_mb=1024)
    assert await membership.set_drain("spare", True) == "draining"
    workers = WorkerStore(pool)
    for wid in ("gone", "big"):
        await workers.joined(worker_id=wid, incarnation="old", hostname="h", state="ready",
                             cpus=2, memory_mb=512, labels={})
        await workers.left(worker_id=wid, incarnation="old", reason="expired", mark=2_000)

    # a group two entries behind the job-submitted stream, with two delivered unacknowledged
    stream = keys.stream(JobSubmitted.TYPE)
    await StreamBus(redis, keys).ensure_group(JobSubmitted.TYPE, "metrics-test")
    await redis.xreadgroup("metrics-test", "c1", {stream: ">"}, count=2)
    entries = await redis.xlen(stream)
    assert entries == 9  # one per submission (the array's included)

    m = await scrape(http)
    assert by(m, "scns_jobs_pending", "reason") == {
        "Priority": 3, "Held": 1, "Dependency": 1, "BeginTime": 1, "JobArrayTaskLimit": 2,
        "Resources": 1, "PartitionTimeLimit": 0, "PartitionConfig": 0,
        "QOSMaxCpuPerUserLimit": 0}
    assert by(m, "scns_jobs_pending_cpus", "reason") == {
        "Priority": 5, "Held": 3, "Dependency": 1, "BeginTime": 4, "JobArrayTaskLimit": 2,
        "Resources": 6, "PartitionTimeLimit": 0, "PartitionConfig": 0,
        "QOSMaxCpuPerUserLimit": 0}
    assert value(m, "scns_jobs_allocated") == 1
    assert value(m, "scns_jobs_running") == 1
    assert value(m, "scns_running_cpus") == 2
    assert by(m, "scns_workers", "state") == {"ready": 1, "draining": 1, "down": 1}
    group = {"stream": JobSubmitted.TYPE, "group": "metrics-test"}
    assert value(m, "scns_stream_group_lag", **group) == entries - 2
    assert value(m, "scns_stream_group_pending", **group) == 2
    assert value(m, "scns_stream_group_consumers", **group) == 1
    assert (value(m, "scns_stream_group_oldest_pending_seconds", **group) or 0) >= 0


async def test_concurrent_scrapes_share_one_refresh(http: Http, clock: Clock) -> None:
    m = await scrape(http)
    # every reason is there, at 0, before any job waits for it
    assert by(m, "scns_jobs_pending", "reason") == dict.fromkeys(map(str, PendingReason), 0)
    assert by(m, "scns_workers", "state") == {"ready": 1, "draining": 0, "down": 0}
    refreshed = CLUSTER.refreshes
    await submit(http, cpus=2)

    # within a second of the last refresh: served from it
    for m in await asyncio.gather(*(scrape(http) for _ in range(8))):
        assert value(m, "scns_jobs_pending", reason="Priority") == 0
    assert CLUSTER.refreshes == refreshed

    # a second later: one refresh, shared by all eight
    clock.now += 1.0
    for m in await asyncio.gather(*(scrape(http) for _ in range(8))):
        assert value(m, "scns_jobs_pending", reason="Priority") == 1
        assert value(m, "scns_jobs_pending_cpus", reason="Priority") == 2
    assert CLUSTER.refreshes == refreshed + 1


# --- outages -----------------------------------------------------------------------------
class Proxy:
    """A TCP forwarder to a real server: cut() is an outage (live connections reset, new ones
    refused), restore() ends it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def restore(self) -> None:
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self.writers -= {writer, up_w}


def via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if netloc[1] else host))


@contextlib.asynccontextmanager
async def proxied(url: str) -> AsyncIterator[tuple[Proxy, str]]:
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 0)
    await proxy.start()
    try:
        yield proxy, via(url, proxy.port)
    finally:
        if proxy.server is not None:
            await proxy.cut()


@contextlib.asynccontextmanager
async def gateway(wiring: Wiring, pool: asyncpg.Pool[Any]) -> AsyncIterator[Http]:
    """A gateway on `wiring`, called with a token it has verified (its cache keeps it for the
    test's length: the outage is of the gauges' sources, not of token checks)."""
    app: web.Application = create_app(wiring)
    row, token = await TokenStore(pool).create("scraper")
    cache = app[auth.TOKEN_CACHE]
    cache.ttl_s = 3600
    cache.put(token, Principal(user="scraper", role=Role.USER, token_id=row.id), row)
    client: Http = TestClient(TestServer(app), headers={"Authorization": f"Bearer {token}"})
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def errors(m: Samples, source: str) -> float:
    return value(m, "scns_metrics_refresh_errors_total", source=source) or 0.0


@pytest.mark.parametrize("source", ["redis", "postgresql"])
async def test_an_outage_leaves_out_its_own_gauges_only(
    source: str, settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], keys: Keys,
    database_url: str, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    await add_worker(Membership(redis, keys), "big", cpus=8, memory_mb=4096)
    await wire(settings, redis, pool).lifecycle.submit(
        JobSpec(script="true", cpus=3))
    await StreamBus(redis, keys).ensure_group(JobSubmitted.TYPE, "g")
    real = {"redis": settings.redis_url, "postgresql": database_url}[source]
    async with proxied(real) as (proxy, url), contextlib.AsyncExitStack() as stack:
        if source == "redis":
            r: Redis = connect(url, name="scns-test-proxied")
            stack.push_async_callback(r.aclose)
            w = wire(settings, r, pool)
        else:
            p = await create_pool(url, max_size=2)
            stack.push_async_callback(p.close)
            w = wire(settings, redis, p)
        client = await stack.enter_async_context(gateway(w, pool))
        lost, kept = ((REDIS_GAUGES, JOB_GAUGES) if source == "redis"
                      else (JOB_GAUGES, REDIS_GAUGES[1:]))

        before = await scrape(client)
        assert set(JOB_GAUGES + REDIS_GAUGES) <= names(before)

        await proxy.cut()
        clock.now += 1.0
        with caplog.at_level(logging.WARNING, logger="services.gateway.metrics"):
            during = await scrape(client)
        assert not names(during) & set(lost)
        assert set(kept) <= names(during)
        assert "scns_gateway_requests_total" in names(during)
        assert errors(during, source) == errors(before, source) + 1
        assert f"metrics: {source} did not answer" in caplog.text
        if source == "postgresql":  # the workers come from the registry's records alone
            assert by(during, "scns_workers", "state") == {"ready": 1, "draining": 0, "down": 0}
        else:
            assert value(during, "scns_jobs_pending_cpus", reason="Priority") == 3

        await proxy.restore()
        clock.now += 1.0
        after = await scrape(client)
        assert set(JOB_GAUGES + REDIS_GAUGES) <= names(after)
        assert errors(after, source) == errors(during, source)
        assert value(after, "scns_jobs_pending", reason="Priority") == 1
        assert value(after, "scns_stream_group_lag", stream=JobSubmitted.TYPE, group="g") == 1



# --- the executor's histograms ------------------------------------------------------------
def observed(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0


async def test_the_executor_observes_each_attempt_once(
    wiring: Wiring, redis: Redis, keys: Keys, tmp_path: Any
) -> None:
    """A duplicate delivery (in flight, after the start, after the end) observes nothing."""
    runner = Runner(worker_id="big", data_dir=open_for_jobs(tmp_path) / "node",
                    lifecycle=wiring.lifecycle, jobs=wiring.jobs,
                    shipper=JobOutputShipper(redis, keys, cap_bytes=1 << 20, ttl_s=60),
                    base_env=base_environment(os.environ), kill_grace_s=1.0)
    job, _ = await wiring.lifecycle.submit(JobSpec(script="echo hi\n", user="ann"))
    assert (await wiring.lifecycle.place([(job.id, 1, "big")])).placed
    waits = observed("scns_job_queue_wait_seconds")
    runs = observed("scns_job_run_seconds", state="COMPLETED")

    assert sorted(await asyncio.gather(runner.launch(job.id, 1),
                                       runner.launch(job.id, 1))) == [False, True]
    assert await runner.launch(job.id, 1) is False  # redelivered once started
    assert await runner.wait_all(30)
    done = await wiring.jobs.get(job.id)
    assert done is not None and done.state is JobState.COMPLETED
    assert await runner.launch(job.id, 1) is False  # after its end: the start's guard refuses

    await runner.close()
    assert observed("scns_job_queue_wait_seconds") == waits + 1
    assert observed("scns_job_run_seconds", state="COMPLETED") == runs + 1
