"""Property-based fuzzing of the live gateway with its own OpenAPI document (schemathesis).

A real gateway (the app `create_app` builds, on real Redis and PostgreSQL) listens on a free
loopback port in a thread of its own; schemathesis draws requests for every operation in
services/gateway/openapi.py, valid and invalid, sends them over HTTP with a bearer token and
checks each answer: never a 5xx, and status code, content type, headers and body as documented.
No scheduler or executor runs, so the jobs it submits stay PENDING and die with the database.

Bounded and reproducible: a few examples per operation, a fixed seed, derandomized, no example
database. Run alone: `pytest tests/integration/test_api_fuzz.py -q`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web

from services.gateway import openapi
from services.gateway.app import create_app
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.redis import connect
from shared.settings import Settings
from shared.wiring import Wiring
from tests.infra import Infra

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EXAMPLES = 50  # per operation, fuzzing phase; examples and coverage phases add their own
SEED = 20261124
# a PENDING job never ends, so ?follow=1 on its log would stream until the gateway stops
NO_FOLLOW = "/api/v1/jobs/{job_id}/log"
EVENTS = "/api/v1/events"  # likewise, an event stream with follow goes on forever
CALLS: Counter[str] = Counter()  # requests sent per operation, reported at the end


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none",
                       "with-security-parameters": False},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "request-timeout": 10,
        "phases": {"stateful": {"enabled": False}},
        "operations": [
            # where the gateway checks what JSON Schema cannot say, valid syntax may still be a
            # 400: JSON Schema's integer admits 2.0, which the validators refuse; a dependency
            # must name jobs that exist; an array is requeued or updated one element at a time;
            # query text must be printable (str.isprintable, beyond a regular expression); a
            # schedule's cron must fire some day and its zone exist; a job's partitions must
            # exist and admit it (422), a partition's default time limit be within its maximum
            {"include-operation-id": ["submitJob", "updateJob", "createToken", "requeueJob",
                                      "listJobs", "listTokens", "createSchedule",
                                      "updateSchedule", "events", "createPartition",
                                      "updatePartition", "putUserLimits"],
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422"]}}},
            # no reconciler runs here: the route's documented "none is running" is a 503
            {"include-path": "/api/v1/admin/reconcile",
             "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", "503"]}}},
        ],
    })


schema = schemathesis.openapi.from_dict(openapi.spec(), config=fuzz_config())


def fuzz_token(database_url: str) -> str:
    """An admin token for the fuzzer (admin: every route is reachable, none is a 403)."""
    from shared.db.tokens import TokenStore

    async def make() -> str:
        pool = await create_pool(database_url, max_size=1)
        try:
            _, token = await TokenStore(pool).create("fuzz", "admin")
        finally:
            await pool.close()
        return token

    return asyncio.run(make())


class LiveGateway:
    """The gateway app on 127.0.0.1:<free port>, served by an event loop in its own thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the gateway did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by __enter__, or by the test that sees no server
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        s = self.settings
        redis = connect(s.redis_url, name="scns-fuzz")
        try:
            pool = await create_pool(s.database_url, max_size=10)
            try:
                await self._listen(create_app(Wiring.build(s, redis, pool)), self._stop)
            finally:
                await pool.close()
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{s.key_prefix}*", count=1000)]
            if keys:
                await redis.unlink(*keys)
            await redis.aclose()

    async def _listen(self, app: web.Application, stop: asyncio.Event) -> None:
        if not any(r.resource is not None and r.resource.canonical == "/api/v1/openapi.json"
                   for r in app.router.routes()):
            app.add_routes(openapi.routes)  # until app.py registers it
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Target:
    """The gateway under fuzz: where it is, the header that authenticates, and the ids of the
    fuzzer's own tokens (a revoke drawn for one of them is pointed elsewhere)."""

    url: str
    headers: dict[str, str]
    own_tokens: frozenset[str]


@pytest.fixture(scope="module")
def gateway(infra: Infra, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Target]:
    """A live gateway on a database and key prefix of its own, and an admin token for it."""
    name = f"fuzz_{uuid.uuid4().hex[:12]}"
    database_url = urlunsplit(urlsplit(infra.postgres_url)._replace(path="/" + name))
    asyncio.run(_admin(infra.postgres_url, f'CREATE DATABASE "{name}"'))
    started = time.monotonic()
    try:
        asyncio.run(migrate(database_url))
        # no request rate limit: the fuzzer sends thousands of requests with one token as fast
        # as they are answered (the limit is tested in test_gateway_limits.py)
        settings = Settings(redis_url=infra.redis_url, database_url=database_url,
                            key_prefix=f"{{fz{uuid.uuid4().hex[:10]}}}:",
                            data_dir=tmp_path_factory.mktemp("fuzz"), log_format="text",
                            rate_limit_rps=0.0)
        headers = {"Authorization": f"Bearer {fuzz_token(database_url)}"}
        with LiveGateway(settings) as live:
            listed = requests.get(f"{live.url}/api/v1/tokens", headers=headers, timeout=10)
            own = {t["id"] for t in listed.json()["items"]} if listed.ok else set()
            yield Target(url=live.url, headers=headers, own_tokens=frozenset(own))
    finally:
        asyncio.run(_admin(infra.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        report = (f"API fuzz: {sum(CALLS.values())} requests over {len(CALLS)} operations, "
                  f"wall time {time.monotonic() - started:.1f}s")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{report}")  # past the output capture, so a plain run shows it too


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@schema.parametrize()
def test_api_fuzz(case: Any, gateway: Target, session: requests.Session) -> None:
    if case.operation.path == NO_FOLLOW and case.query:
        case.query.pop("follow", None)
    if case.operation.path == EVENTS:  # the events that are there, then the end
        case.query = {**(case.query or {}), "follow": "0"}
    if case.path_parameters and case.path_parameters.get("token_id") in gateway.own_tokens:
        case.path_parameters["token_id"] = "t000000000000"
    CALLS[case.operation.label] += 1
    resp = case.call_and_validate(base_url=gateway.url, session=session,
                                  headers=gateway.headers)
    assert resp.status_code != 401, "the fuzzer's token stopped working"


# Requests the fuzzer is unlikely to draw that made the gateway answer 500 (found by probing);
# {job} is a job that exists. Each goes through the same checks, and must be a 400.
EDGES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/jobs", {"query": {"limit": "--5"}}),
    ("GET", "/api/v1/tokens", {"query": {"limit": "--5"}}),
    ("GET", "/api/v1/jobs/{job_id}/log", {"path_parameters": {"job_id": "{job}"},
                                          "query": {"attempt": "--1"}}),
    ("POST", "/api/v1/jobs", {"query": {"test_only": "1"}, "body": {
        "script": "true", "begin_at": "9999-12-31T23:59:59-01:00"}}),
    ("POST", "/api/v1/jobs", {"body": {"script": "true", "begin_at": "9999-12-31T23:59:59-01:00"}}),
    ("GET", "/api/v1/jobs", {"query": {"since": "9999-12-31T23:59:59-01:00"}}),
    ("PATCH", "/api/v1/jobs/{job_id}", {"path_parameters": {"job_id": "{job}"},
                                        "body": {"begin_at": "9999-12-31T23:59:59-01:00"}}),
    # a 400 today only because PostgreSQL refuses the value (app.api_errors maps DataError)
    ("POST", "/api/v1/jobs", {"body": {"script": "true", "priority": -(2**31) + 1,
                                       "nice": 10_000}}),
    ("GET", "/api/v1/jobs/{job_id}", {"path_parameters": {"job_id": "1_9999999999"}}),
]


@pytest.fixture(scope="module")
def job(gateway: Target) -> str:
    # the fuzzer may have left a default partition that refuses jobs, or limits on its user
    open_to_all = {"selector": {}, "allowed_users": None, "max_time_limit": None,
                   "max_cpus_per_job": None, "default": True}
    made = requests.post(f"{gateway.url}/api/v1/partitions", json={"name": "edges",
                         **open_to_all}, headers=gateway.headers, timeout=10)
    if made.status_code == 409:
        made = requests.patch(f"{gateway.url}/api/v1/partitions/edges", json=open_to_all,
                              headers=gateway.headers, timeout=10)
    assert made.ok, made.text
    limits = requests.put(f"{gateway.url}/api/v1/users/fuzz/limits",
                          json={"max_pending_jobs": None, "max_running_cpus": None},
                          headers=gateway.headers, timeout=10)
    assert limits.ok, limits.text
    resp = requests.post(f"{gateway.url}/api/v1/jobs", json={"script": "true", "hold": True},
                         headers=gateway.headers, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


@pytest.mark.parametrize(("method", "path", "parts"), EDGES,
                         ids=[f"{m} {p} {sorted(x.get('query', x.get('body', {})).items())}"[:90]
                              for m, p, x in EDGES])
def test_edge_cases_are_4xx(method: str, path: str, parts: dict[str, Any], job: str,
                            gateway: Target, session: requests.Session) -> None:
    ids = {k: v.replace("{job}", job) for k, v in parts.get("path_parameters", {}).items()}
    case = schema[path][method].Case(**{**parts, "path_parameters": ids})
    resp = case.call_and_validate(base_url=gateway.url, session=session,
                                  headers=gateway.headers)
    assert resp.status_code == 400, resp.text


def test_the_served_document_is_the_spec(gateway: Target) -> None:
    resp = requests.get(f"{gateway.url}/api/v1/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == openapi.spec()
