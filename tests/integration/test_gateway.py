"""The gateway against real Redis and PostgreSQL (in-process aiohttp server, real HTTP)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.cli.client import Client
from services.gateway.app import STOPPING
from shared.keys import Keys
from tests.integration.conftest import bearer

MiB = 1024 * 1024


OK = {"script": "echo hi\n"}

# (case, body or raw bytes, expected status, a word the message must contain)
BAD_SUBMISSIONS: list[tuple[str, Any, int, str]] = [
    ("not json", b"{script: echo}", 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("json array", [1, 2], 400, "JSON object"),
    ("json string", "echo hi", 400, "JSON object"),
    ("missing script", {"cpus": 1}, 400, "'script' is required"),
    ("script not a string", {"script": 123}, 400, "'script' must be a string"),
    ("blank script", {"script": "   \n"}, 400, "empty"),
    ("script with NUL", {"script": "echo\x00hi"}, 400, "NUL"),
    ("script over 1 MiB", {"script": "#" * (MiB + 1)}, 413, "limit"),
    ("body over 2 MiB", b'{"script": "' + b"#" * (2 * MiB + 10) + b'"}', 413, "larger"),
    ("negative cpus", {**OK, "cpus": -1}, 400, "'cpus' must be at least 1"),
    ("zero cpus", {**OK, "cpus": 0}, 400, "'cpus' must be at least 1"),
    ("cpus as string", {**OK, "cpus": "4"}, 400, "'cpus' must be an integer"),
    ("cpus as float", {**OK, "cpus": 1.5}, 400, "'cpus' must be an integer"),
    ("cpus as bool", {**OK, "cpus": True}, 400, "'cpus' must be an integer"),
    ("too many cpus", {**OK, "cpus": 9}, 422, "never be satisfied"),
    ("too much memory", {**OK, "memory_mb": 5000}, 422, "never be satisfied"),
    ("zero memory", {**OK, "memory_mb": 0}, 400, "'memory_mb'"),
    ("zero time limit", {**OK, "time_limit": 0}, 400, "'time_limit'"),
    ("negative time limit", {**OK, "time_limit": -5}, 400, "'time_limit'"),
    ("time limit as text", {**OK, "time_limit": "1h"}, 400, "'time_limit' must be an integer"),
    ("env not an object", {**OK, "env": ["A=1"]}, 400, "'env' must be an object"),
    ("env name with a digit first", {**OK, "env": {"1BAD": "x"}}, 400, "not valid"),
    ("env name with a dash", {**OK, "env": {"MY-VAR": "x"}}, 400, "not valid"),
    ("env name with a newline at its end", {**OK, "env": {"A\n": "x"}}, 400, "not valid"),
    ("env value not a string", {**OK, "env": {"A": 1}}, 400, "must be a string"),
    ("reserved env name", {**OK, "env": {"SCNS_JOB_ID": "7"}}, 400, "reserved"),
    ("unknown field", {**OK, "niceness": 100}, 400, "unknown field(s): niceness"),
    ("priority above a user's range", {**OK, "priority": 101}, 403, "only an admin"),
    ("negative priority", {**OK, "priority": -1}, 403, "outside 0-100"),
    ("priority as string", {**OK, "priority": "high"}, 400, "'priority' must be an integer"),
    ("retries above 10", {**OK, "retries": 11}, 400, "'retries' must be at most 10"),
    ("negative retry delay", {**OK, "retry_delay_s": -1}, 400, "'retry_delay_s'"),
    ("begin_at not a time", {**OK, "begin_at": "tomorrow"}, 400, "ISO 8601"),
    ("begin_at a number", {**OK, "begin_at": 1700000000}, 400, "ISO 8601"),
    ("begin_at year 0", {**OK, "begin_at": "0000-01-01T00:00:00Z"}, 400, "ISO 8601"),
    ("name not a string", {**OK, "name": 5}, 400, "'name' must be a string"),
    ("name too long", {**OK, "name": "n" * 201}, 400, "longer than"),
    ("name with a newline", {**OK, "name": "a\nb"}, 400, "control characters"),
    ("hold not a bool", {**OK, "hold": "yes"}, 400, "'hold' must be true or false"),
    ("bad job array", {**OK, "array": "0-9%x"}, 400, "limit"),
    ("array too large", {**OK, "array": "0-200000"}, 400, "SCNS_MAX_ARRAY_SIZE"),
    ("bad dependency", {**OK, "dependency": "afterwards:1"}, 400, "unknown dependency type"),
    ("unknown dependency", {**OK, "dependency": "afterok:999999"}, 400, "unknown job"),
    ("relative workdir", {**OK, "workdir": "tmp"}, 400, "absolute path"),
    ("unknown partition", {**OK, "partition": "gpu"}, 422, "no such partition"),
]


@pytest.mark.parametrize(("case", "body", "status", "words"), BAD_SUBMISSIONS,
                         ids=[c[0] for c in BAD_SUBMISSIONS])
async def test_bad_submissions_get_a_clear_4xx(
    http: TestClient[Any, Any], case: str, body: Any, status: int, words: str,
    pool: asyncpg.Pool[Any],
) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await http.post("/api/v1/jobs", data=io.BytesIO(raw),
                           headers={"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    payload = await resp.json()
    assert set(payload) == {"error"}
    assert payload["error"]["code"]
    assert words in payload["error"]["message"], payload
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_wrong_content_type(http: TestClient[Any, Any]) -> None:
    resp = await http.post("/api/v1/jobs", data="echo hi", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/jobs/abc", 400), ("GET", "/api/v1/jobs/999", 404),
    ("DELETE", "/api/v1/jobs/999", 404), ("GET", "/api/v1/jobs?state=BOGUS", 400),
    ("GET", "/api/v1/jobs?limit=0", 400), ("GET", "/api/v1/jobs?cursor=x", 400),
    ("GET", "/api/v1/nope", 404), ("PUT", "/api/v1/jobs", 405),
    ("GET", "/api/v1/jobs/1/log?stream=stdin", 400),
    ("POST", "/api/v1/workers/ghost/drain", 404),
])
async def test_bad_requests_are_json_4xx(http: TestClient[Any, Any], method: str, path: str,
                                         status: int, pool: asyncpg.Pool[Any]) -> None:
    resp = await http.request(method, path, headers=await bearer(pool, "root", "admin"))
    assert resp.status == status
    assert (await resp.json())["error"]["message"]


async def test_submit_is_durable_then_announced(http: TestClient[Any, Any], redis: Redis,
                                                keys: Keys, pool: asyncpg.Pool[Any]) -> None:
    resp = await http.post("/api/v1/jobs", json={"script": "echo hi", "cpus": 2, "name": "x",
                                                 "env": {"A": "1"}, "time_limit": 60})
    assert resp.status == 201
    job = await resp.json()
    assert job["state"] == "PENDING" and job["user"] == "ann" and job["cpus"] == 2
    assert job["submitted_at"].endswith("Z")
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
    assert row["env"] == {"A": "1"} and row["time_limit_s"] == 60
    events = await redis.xrange(keys.stream("job-submitted"))
    assert len(events) == 1 and f'"job_id":{job["id"]}' in events[0][1]["e"]


async def test_idempotency_key_makes_retries_safe(http: TestClient[Any, Any],
                                                 pool: asyncpg.Pool[Any]) -> None:
    body = {"script": "echo once", "cpus": 1}
    ann = {"Idempotency-Key": "k-1"}
    first = await http.post("/api/v1/jobs", json=body, headers=ann)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    job = await first.json()
    # the same request again (a client whose first answer was lost): the same job, not a new one
    again = await http.post("/api/v1/jobs", json=body, headers=ann)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == job["id"]
    # the same key for a different request is refused, not silently answered with another job
    other = await http.post("/api/v1/jobs", json={**body, "cpus": 2}, headers=ann)
    assert other.status == 409
    assert "different request" in (await other.json())["error"]["message"]
    # keys belong to a user: bob's k-1 is his own job
    bob = await http.post("/api/v1/jobs", json=body,
                          headers={**await bearer(pool, "bob"), "Idempotency-Key": "k-1"})
    assert bob.status == 201 and (await bob.json())["id"] != job["id"]
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 2


async def test_concurrent_retries_of_one_key_make_one_job(http: TestClient[Any, Any],
                                                          pool: asyncpg.Pool[Any]) -> None:
    headers = {"Idempotency-Key": "race"}
    resps = await asyncio.gather(*[http.post("/api/v1/jobs", json={"script": "echo r"},
                                             headers=headers) for _ in range(20)])
    assert sorted(r.status for r in resps) == [200] * 19 + [201]
    assert len({(await r.json())["id"] for r in resps}) == 1
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_cli_submit_survives_a_lost_answer(http: TestClient[Any, Any],
                                                pool: asyncpg.Pool[Any]) -> None:
    """The first try reaches the gateway and commits, then its answer is lost (the connection
    drops, as when a gateway dies mid-request); `scns submit`'s client retries with the same
    key and gets that job: one row, not two, not none."""
    upstream = http.server.port
    lost = 0

    async def lossy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal lost
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        up_w.write(head + await reader.readexactly(length))
        answer = await up_r.read(65536)  # the gateway answered: the job exists
        if lost == 0:
            lost += 1
        else:
            writer.write(answer)
            await writer.drain()
        for w in (writer, up_w):
            w.close()

    proxy = await asyncio.start_server(lossy, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        token = (await bearer(pool, "cli"))["Authorization"].split()[1]
        client = Client(f"http://127.0.0.1:{port}", token=token, timeout=5)
        job = await asyncio.to_thread(client.submit, {"script": "echo cli"}, retry_s=20)
    finally:
        proxy.close()
    assert lost == 1
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1
    assert await pool.fetchval("SELECT id FROM jobs") == job["id"]


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there", "ключ"])
async def test_bad_idempotency_key_is_400(http: TestClient[Any, Any], key: str) -> None:
    resp = await http.post("/api/v1/jobs", json={"script": "echo"},
                           headers={"Idempotency-Key": key})
    assert resp.status == 400
    assert "Idempotency-Key" in (await resp.json())["error"]["message"]


async def test_list_filters_and_paginates(http: TestClient[Any, Any]) -> None:
    ids = []
    for i in range(5):
        r = await http.post("/api/v1/jobs", json={"script": "true", "name": f"n{i % 2}"})
        ids.append((await r.json())["id"])
    page = await (await http.get("/api/v1/jobs?limit=2")).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    page2 = await (await http.get(f"/api/v1/jobs?limit=2&cursor={page['next_cursor']}")).json()
    assert [j["id"] for j in page2["items"]] == ids[::-1][2:4]
    last = await (await http.get(f"/api/v1/jobs?limit=2&cursor={page2['next_cursor']}")).json()
    assert [j["id"] for j in last["items"]] == ids[:1] and last["next_cursor"] is None
    named = await (await http.get("/api/v1/jobs?name=n1&state=PENDING")).json()
    assert [j["id"] for j in named["items"]] == [ids[3], ids[1]]


async def test_resources_workers_and_stats(http: TestClient[Any, Any],
                                           pool: asyncpg.Pool[Any]) -> None:
    res = await http.get("/api/v1/resources")
    body = await res.json()
    assert body == {"total_cpus": 8, "allocated_cpus": 0, "available_cpus": 8,
                    "utilization": 0.0, "total_memory_mb": 4096, "allocated_memory_mb": 0,
                    "available_memory_mb": 4096}
    timing = res.headers["Server-Timing"]
    assert float(timing.split("dur=")[1]) >= 0  # the server's own time, in ms
    workers = (await (await http.get("/api/v1/workers")).json())["items"]
    assert [(w["id"], w["state"], w["cpus"]) for w in workers] == [("big", "ready", 8)]
    await http.post("/api/v1/jobs", json={"script": "true"})
    stats = await (await http.get("/api/v1/queues/stats")).json()
    assert stats["states"] == {"PENDING": 1}
    admin = await bearer(pool, "root", "admin")
    drained = await (await http.post("/api/v1/workers/big/drain", headers=admin)).json()
    assert drained["state"] == "draining"
    assert (await (await http.post("/api/v1/workers/big/resume", headers=admin)).json()
            )["state"] == "ready"


async def test_health_endpoints(http: TestClient[Any, Any]) -> None:
    assert (await http.get("/healthz")).status == 200
    ready = await http.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["checks"] == {"redis": True, "postgresql": True}
    assert (body["ready"], body["degraded"], body["stopping"]) == (True, False, False)
    assert "scns_gateway_requests_total" in await (await http.get("/metrics")).text()
    # once stopping (SIGTERM), not ready: the Service's endpoints drop it before it closes
    http.app[STOPPING].set()
    stopping = await http.get("/readyz")
    assert stopping.status == 503
    assert (await stopping.json())["stopping"] is True
