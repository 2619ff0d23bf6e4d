"""The gateway under abusive load, against real Redis and PostgreSQL: an exhausted database pool
and unbounded statements, listings that read no scripts, the page cap, follows that end (at
their longest time, or when the client goes), the stream caps and the request rate.

Every verdict waits for a condition with a generous deadline rather than after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.gateway import common, throttle
from services.gateway.app import create_app
from services.gateway.throttle import THROTTLE
from shared.db.pool import create_pool
from shared.db.queries import q
from shared.infra import open_database
from shared.keys import Keys
from shared.membership import Membership
from shared.settings import Settings
from tests.helpers import add_worker, wait_for, wire
from tests.integration.conftest import bearer
from tests.openapi_check import Recorder
from tests.sse import messages

pytestmark = pytest.mark.timeout(120)

Gateway = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def gateway(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], keys: Keys
                  ) -> AsyncIterator[Gateway]:
    """Makes gateways on this test's Redis prefix and database with settings of the test's
    own (`db=` another pool), each called with user ann's token; their answers are held to
    the OpenAPI document when the test ends."""
    await add_worker(Membership(redis, keys), "big", cpus=8, memory_mb=4096)
    clients: list[TestClient[Any, Any]] = []
    recorders: list[Recorder] = []

    async def make(*, db: asyncpg.Pool[Any] | None = None, **overrides: Any
                   ) -> TestClient[Any, Any]:
        app = create_app(wire(dataclasses.replace(settings, **overrides), redis, db or pool))
        recorder = Recorder()
        app.middlewares.insert(0, recorder.middleware)
        client: TestClient[Any, Any] = TestClient(TestServer(app),
                                                  headers=await bearer(pool, "ann"))
        await client.start_server()
        assert client.server.runner is not None
        throttle.watch(client.server.runner.server)
        clients.append(client)
        recorders.append(recorder)
        return client

    try:
        yield make
    finally:
        for c in clients:
            await c.close()
    assert [p for r in recorders for p in r.problems()] == []


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("scns_gateway_refusals_total", {"reason": reason}) or 0.0


async def submit(http: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    resp = await http.post("/api/v1/jobs", json={"script": "echo hi\n", **body})
    assert resp.status == 201, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


async def refused(resp: ClientResponse, status: int, code: str) -> str:
    """The refusal's message, once its status, code and Retry-After are checked."""
    assert resp.status == status, await resp.text()
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


# --- PostgreSQL --------------------------------------------------------------------------
async def test_an_exhausted_pool_is_a_503_with_retry_after_not_a_hang(
        gateway: Gateway, database_url: str) -> None:
    small = await create_pool(database_url, max_size=1, acquire_timeout_s=0.2)
    try:
        http = await gateway(db=small)
        assert (await http.get("/api/v1/jobs")).status == 200  # the token is cached now
        before = refusals("db_pool")
        async with small.acquire():  # the pool's only connection, held
            started = time.monotonic()
            resp = await http.get("/api/v1/jobs")
            assert "free" in await refused(resp, 503, "overloaded")
            assert time.monotonic() - started < 10  # the acquire timeout, not forever
        assert refusals("db_pool") == before + 1
        assert (await http.get("/api/v1/jobs")).status == 200  # and back once it is free
    finally:
        await small.close()


async def test_statement_timeout_is_a_session_setting_of_every_pooled_connection(
        pool: asyncpg.Pool[Any], database_url: str) -> None:
    # the default (SCNS_STATEMENT_TIMEOUT_S=30), set by a SET: a startup parameter would be
    # refused by PgBouncer (source 'client'), a SET is the session's own
    assert await pool.fetchval("SHOW statement_timeout") == "30s"
    assert await pool.fetchval(
        "SELECT source FROM pg_settings WHERE name = 'statement_timeout'") == "session"
    short = await create_pool(database_url, max_size=2, statement_timeout_s=0.25)
    try:
        async with short.acquire() as a, short.acquire() as b:  # every connection has it
            assert [await c.fetchval("SHOW statement_timeout") for c in (a, b)] == ["250ms"] * 2
        with pytest.raises(asyncpg.QueryCanceledError):
            await short.fetchval("SELECT pg_sleep(5)")
        assert await short.fetchval("SELECT 1") == 1  # the connection is still good
    finally:
        await short.close()
    # what a service's entry point opens (shared/service.py passes its settings here)
    opened = await open_database(database_url, application_name="scns-test",
                                 run_migrations=False, acquire_timeout_s=0.5,
                                 statement_timeout_s=4)
    try:
        assert await opened.fetchval("SHOW statement_timeout") == "4s"
        assert getattr(opened, "acquire_timeout_s", None) == 0.5
    finally:
        await opened.close()


def _columns_read_from(plan: Any, relation: str) -> list[str]:
    """The output columns of every scan of `relation` in an EXPLAIN (VERBOSE, FORMAT JSON)."""
    out: list[str] = []
    if isinstance(plan, dict):
        if plan.get("Relation Name") == relation:
            out += plan.get("Output", [])
        for value in plan.values():
            out += _columns_read_from(value, relation)
    elif isinstance(plan, list):
        for value in plan:
            out += _columns_read_from(value, relation)
    return out


async def test_listings_read_no_script_and_no_environment(
        gateway: Gateway, pool: asyncpg.Pool[Any]) -> None:
    http = await gateway()
    big = "echo " + "x" * 100_000 + "\n"
    one = await submit(http, script=big, env={"SECRET_THING": "s3cret"})
    array = await submit(http, script=big, env={"SECRET_THING": "s3cret"}, array="0-4")
    sql = q("list_jobs")
    assert "j.*" not in sql
    # what PostgreSQL reads: the scans of jobs and job_arrays output neither column
    plan = orjson.loads(await pool.fetchval("EXPLAIN (VERBOSE, FORMAT JSON) " + sql,
                                            None, None, None, None, 10, None, None, None, None))
    for relation, alias in (("jobs", "j"), ("job_arrays", "ja")):
        read = _columns_read_from(plan, relation)
        assert read, f"no scan of {relation} in {plan}"
        # (`j.*` would read `j.script` and `j.env`, `to_jsonb(ja)` reads `ja.*`)
        assert not [c for c in read if any(f"{alias}.{col}" in c
                                           for col in ("script", "env", "*"))], read
    page = await (await http.get("/api/v1/jobs", params={"limit": "200"})).json()
    assert {j["id"] for j in page["items"]} >= {one["id"], array["id"]}
    assert len(page["items"]) == 6
    for j in page["items"]:
        assert "script" not in j and "env" not in j
    element = next(j for j in page["items"] if j["array_task_id"] == 3)
    assert (element["array_job_id"], element["array_throttle"]) == (array["id"], None)
    full = await (await http.get(f"/api/v1/jobs/{one['id']}")).json()  # one job: both
    assert full["script"] == big and full["env"]["SECRET_THING"] == "s3cret"
    elem = await (await http.get(f"/api/v1/jobs/{array['id']}_3")).json()
    assert elem["script"] == big and elem["env"]["SECRET_THING"] == "s3cret"
    schedule = await http.post("/api/v1/schedules", json={
        "name": "nightly", "cron": "@daily", "job": {"script": big, "env": {"A": "b"}}})
    assert schedule.status == 201, await schedule.text()
    listed = await (await http.get("/api/v1/schedules")).json()
    assert listed["items"][0]["job"].keys().isdisjoint({"script", "env"})
    assert "job_spec - 'script' - 'env'" in q("schedule_list")


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/schedules", "/api/v1/tokens",
                                  "/api/v1/schedules/{sid}/runs"])
async def test_pages_are_200_at_most(gateway: Gateway, pool: asyncpg.Pool[Any],
                                     path: str) -> None:
    http = await gateway()
    admin = await bearer(pool, "root", "admin")
    made = await http.post("/api/v1/schedules", json={"name": "s", "cron": "@daily",
                                                      "job": {"script": "true"}})
    path = path.format(sid=(await made.json())["id"])
    ok = await http.get(path, params={"limit": "200"}, headers=admin)
    assert ok.status == 200, await ok.text()
    assert "next_cursor" in await ok.json()
    too_big = await http.get(path, params={"limit": "201"}, headers=admin)
    assert too_big.status == 400
    message = (await too_big.json())["error"]["message"]
    assert "from 1 to 200" in message and "next_cursor" in message


async def test_tokens_are_listed_page_by_page(gateway: Gateway, pool: asyncpg.Pool[Any]
                                              ) -> None:
    http = await gateway()
    admin = await bearer(pool, "root", "admin")
    for user in ("a", "b", "c"):
        await bearer(pool, user)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await http.get("/api/v1/tokens", params=params, headers=admin)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    every = await (await http.get("/api/v1/tokens", headers=admin)).json()
    assert seen == [t["id"] for t in every["items"]] and len(seen) == 5  # ann, root, a, b, c
    bad = await http.get("/api/v1/tokens", params={"cursor": "x y"}, headers=admin)
    assert bad.status == 400


# --- streams -------------------------------------------------------------------------------
async def _open(http: TestClient[Any, Any], path: str, **kw: Any) -> ClientResponse:
    """A streaming request whose answer has begun (its slot is held by then)."""
    resp = await http.get(path, **kw)
    assert resp.status == 200, await resp.text()
    return resp


async def test_a_follow_ends_at_the_longest_follow_time(gateway: Gateway) -> None:
    http = await gateway(follow_max_s=1.0)
    job = await submit(http)  # PENDING for good: no scheduler runs here
    slots = http.app[THROTTLE].streams
    started = time.monotonic()
    resp = await _open(http, f"/api/v1/jobs/{job['id']}/log", params={"follow": "1"})
    assert await asyncio.wait_for(resp.read(), 30) == b""  # ended cleanly, nothing lost
    assert time.monotonic() - started >= 0.9
    await wait_for(lambda: _true(slots.open == 0), timeout=10, what="the slot freed")
    events = await _open(http, "/api/v1/events", params={"types": "job-finished"})
    comments = [c async for m in messages(events.content) for c in m.comments]
    assert any("reconnect with Last-Event-ID" in c for c in comments), comments
    await wait_for(lambda: _true(slots.open == 0), timeout=10, what="the slot freed")


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("kind", ["log", "events"])
async def test_a_client_that_goes_away_leaves_nothing_behind(
        gateway: Gateway, kind: str) -> None:
    http = await gateway()  # the longest follow: an hour
    job = await submit(http)
    path = f"/api/v1/jobs/{job['id']}/log" if kind == "log" else "/api/v1/events"
    slots = http.app[THROTTLE].streams
    baseline = len(asyncio.all_tasks())
    streams = [await _open(http, path, params={"follow": "1"}) for _ in range(5)]
    assert slots.open == 5
    text = await (await http.get("/metrics")).text()
    assert "scns_gateway_streams" in text and "scns_gateway_tasks" in text
    assert "scns_gateway_connections" in text
    connections = _gauge(text, "scns_gateway_connections")
    assert connections >= 5
    for resp in streams:
        resp.close()  # the client hangs up
    await wait_for(lambda: _true(slots.open == 0), timeout=20, what="every stream's end")
    await wait_for(lambda: _true(len(asyncio.all_tasks()) <= baseline), timeout=20,
                   what=f"tasks back to {baseline}")
    text = await (await http.get("/metrics")).text()
    assert _gauge(text, "scns_gateway_connections") <= connections - 5


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_streams_past_the_gateways_cap_are_503_and_past_a_tokens_429(
        gateway: Gateway, pool: asyncpg.Pool[Any]) -> None:
    http = await gateway(max_streams=3, max_streams_per_token=2)
    job = await submit(http)
    log = f"/api/v1/jobs/{job['id']}/log"
    mine = [await _open(http, log, params={"follow": "1"}),
            await _open(http, "/api/v1/events")]
    before = refusals("streams_per_token")
    await refused(await http.get("/api/v1/events"), 429, "too_many_streams")
    await refused(await http.get(log, params={"follow": "1"}), 429, "too_many_streams")
    assert refusals("streams_per_token") == before + 2
    assert (await http.get(log)).status == 200  # not a stream: no slot needed
    admin = await bearer(pool, "root", "admin")
    other = await _open(http, "/api/v1/events", headers=admin)
    before = refusals("streams")
    message = await refused(await http.get("/api/v1/events", headers=await bearer(
        pool, "bob")), 503, "overloaded")
    assert "3 streams" in message
    assert refusals("streams") == before + 1
    for resp in (*mine, other):
        resp.close()
    slots = http.app[THROTTLE].streams
    await wait_for(lambda: _true(slots.open == 0), timeout=20, what="every stream's end")
    (await _open(http, "/api/v1/events")).close()  # room again


# --- the request rate ----------------------------------------------------------------------
async def test_a_token_past_its_rate_gets_429_with_retry_after(
        gateway: Gateway, pool: asyncpg.Pool[Any]) -> None:
    # 0.01 a second: nothing refills while the test runs, however slow the machine
    http = await gateway(rate_limit_rps=0.01, rate_limit_burst=5)
    for _ in range(5):
        assert (await http.get("/api/v1/resources")).status == 200
    before = refusals("rate_limit")
    resp = await http.get("/api/v1/resources")
    message = await refused(resp, 429, "rate_limited")
    assert "per token" in message
    assert int(resp.headers["Retry-After"]) > 1
    assert refusals("rate_limit") == before + 1
    assert (await http.post("/api/v1/jobs", json={"script": "true"})).status == 429
    # another token has a bucket of its own; probes and metrics are never limited
    assert (await http.get("/api/v1/resources", headers=await bearer(pool, "bob"))).status \
        == 200
    for path in ("/healthz", "/readyz", "/metrics") * 5:
        assert (await http.get(path)).status == 200


async def test_a_full_page_or_a_large_body_costs_as_many_requests_as_the_work(
        gateway: Gateway) -> None:
    """A page of 200 counts as 1 + 10 requests, a 640 KiB submission as 1 + 10: a token's
    rate bounds the work it can ask for, not only the number of its requests."""
    http = await gateway(rate_limit_rps=0.01, rate_limit_burst=25)
    assert (await http.get("/api/v1/jobs", params={"limit": "200"})).status == 200  # 11
    assert (await http.get("/api/v1/jobs", params={"limit": "200"})).status == 200  # 22
    resp = await http.get("/api/v1/jobs", params={"limit": "200"})
    message = await refused(resp, 429, "rate_limited")
    assert "a page of 200 counts as 10 more" in message
    assert (await http.get("/api/v1/jobs", params={"limit": "10"})).status == 200  # 24
    big = {"script": "true\n#" + "x" * (640 * 1024), "hold": True}
    await refused(await http.post("/api/v1/jobs", json=big), 429, "rate_limited")


async def test_callers_without_a_valid_token_are_limited_by_address(gateway: Gateway) -> None:
    http = await gateway(rate_limit_rps=0.01, rate_limit_burst=3)
    bad = {"Authorization": "Bearer scns_" + "0" * 43}
    statuses = [(await http.get("/api/v1/jobs", headers=bad)).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    # the address's bucket is empty: no more lookups, and no public route either
    await refused(await http.get("/api/v1/jobs", headers=bad), 429, "rate_limited")
    await refused(await http.get("/api/v1/openapi.json"), 429, "rate_limited")
    assert (await http.get("/healthz")).status == 200


async def test_requests_that_miss_the_token_cache_together_share_one_lookup(
        gateway: Gateway, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """30 requests with a token the gateway has not seen, all arriving while its lookup is in
    flight: one PostgreSQL lookup, one request from the address's bucket (3), and every one
    served."""
    from shared.db.tokens import TokenStore

    real_find = TokenStore.find
    lookups = 0

    async def slow_find(self: TokenStore, token: str) -> Any:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.3)  # every request arrives while this one is in flight
        return await real_find(self, token)

    monkeypatch.setattr(TokenStore, "find", slow_find)
    http = await gateway(rate_limit_rps=0.01, rate_limit_burst=3)
    admin = await bearer(pool, "root", role="admin")  # its requests cost a tenth: 30 fit
    answers = await asyncio.gather(*(http.get("/api/v1/resources", headers=admin)
                                     for _ in range(30)))
    assert [r.status for r in answers] == [200] * 30
    assert lookups == 1


async def test_rate_zero_turns_the_limit_off(gateway: Gateway) -> None:
    http = await gateway(rate_limit_rps=0.0, rate_limit_burst=1)
    for _ in range(20):
        assert (await http.get("/api/v1/resources")).status == 200


async def test_a_client_that_stops_reading_is_hung_up_on(
        gateway: Gateway, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "WRITE_STALL_S", 0.5)
    http = await gateway()
    job = await submit(http)
    chunk = "x" * 65_536
    for _ in range(160):  # 10 MiB of output shipped, more than socket buffers hold
        await redis.xadd(keys.job_output(job["id"], 1, "stdout"), {"d": chunk})
    slots = http.app[THROTTLE].streams
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (http.host, http.port))
    token = http.session.headers["Authorization"]
    request = (f"GET /api/v1/jobs/{job['id']}/log?follow=1 HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: {token}\r\n\r\n")
    try:
        await asyncio.get_running_loop().sock_sendall(sock, request.encode())
        await wait_for(lambda: _true(slots.open == 1), timeout=20, what="the stream's start")
        # ... and never reads a byte: the gateway hangs up and frees the slot
        await wait_for(lambda: _true(slots.open == 0), timeout=30, what="the hang-up")
    finally:
        sock.close()


async def test_the_statement_timeout_passes_through_pgbouncer(
        database_url: str, tmp_path: Path) -> None:
    """PgBouncer refuses a startup packet naming statement_timeout; a SET is passed on."""
    from tests.integration.test_preflight import _pgbouncer

    bouncer, url = _pgbouncer(tmp_path, database_url, "session")
    try:
        p = await create_pool(url, max_size=1, statement_timeout_s=0.25)
        try:
            assert await p.fetchval("SHOW statement_timeout") == "250ms"
            with pytest.raises(asyncpg.QueryCanceledError):
                await p.fetchval("SELECT pg_sleep(5)")
        finally:
            await p.close()
    finally:
        bouncer.terminate()
        bouncer.wait(10)


async def test_an_admin_token_gets_ten_times_a_users_rate(gateway: Gateway,
                                                          pool: asyncpg.Pool[Any]) -> None:
    http = await gateway(rate_limit_rps=0.01, rate_limit_burst=2)
    admin = await bearer(pool, "root", role="admin")
    statuses = [(await http.get("/api/v1/resources", headers=admin)).status
                for _ in range(20)]
    assert statuses == [200] * 20
    await refused(await http.get("/api/v1/resources", headers=admin), 429, "rate_limited")
