"""Job controls through the gateway (in-process aiohttp, real Redis and PostgreSQL): hold,
release, requeue, PATCH, attempts, and the 4xx (never 500) answers to bad ids and queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.db.jobs import JobStore, Usage
from shared.events import CancelRequested, decode
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore


async def submit(http: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    resp = await http.post("/api/v1/jobs", json={"script": "true", **fields})
    assert resp.status == 201, await resp.text()
    job: dict[str, Any] = await resp.json()
    return job


async def call(http: TestClient[Any, Any], method: str, path: str, body: Any = None
               ) -> tuple[int, dict[str, Any]]:
    resp = await http.request(method, path, json=body)
    return resp.status, await resp.json()


async def running(pool: asyncpg.Pool[Any], job_id: int) -> None:
    t = TransitionStore(pool)
    assert await t.place([(job_id, 1, "big")])
    assert await t.start(job_id, 1, "big") is not None


async def test_hold_and_release_a_pending_job(http: TestClient[Any, Any]) -> None:
    job = await submit(http)
    status, held = await call(http, "POST", f"/api/v1/jobs/{job['id']}/hold")
    assert status == 200 and (held["state"], held["reason"]) == ("PENDING", "Held")
    status, again = await call(http, "POST", f"/api/v1/jobs/{job['id']}/hold")
    assert status == 200 and again["reason"] == "Held"  # holding twice is harmless
    status, released = await call(http, "POST", f"/api/v1/jobs/{job['id']}/release")
    assert status == 200 and (released["state"], released["reason"]) == ("PENDING", "Priority")


async def test_a_held_job_with_a_future_begin_time_is_released_to_wait_for_it(
    http: TestClient[Any, Any]
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job = await submit(http, hold=True, begin_at=later)
    assert job["reason"] == "Held"
    _, released = await call(http, "POST", f"/api/v1/jobs/{job['id']}/release")
    assert released["reason"] == "BeginTime"


async def test_hold_of_a_running_job_is_409_with_a_message(http: TestClient[Any, Any],
                                                           pool: asyncpg.Pool[Any]) -> None:
    job = await submit(http)
    await running(pool, job["id"])
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/hold")
    assert status == 409
    assert body["error"]["message"] == (f"job {job['id']} is RUNNING; only a PENDING job can be "
                                        f"held (requeue job {job['id']} to start it over)")
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/release")
    assert status == 409 and "only a held PENDING job" in body["error"]["message"]


async def test_patch_a_pending_job(http: TestClient[Any, Any]) -> None:
    job = await submit(http, cpus=1, name="before", time_limit=60)
    begin = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    status, body = await call(http, "PATCH", f"/api/v1/jobs/{job['id']}", {
        "priority": 42, "time_limit": 120, "cpus": 4, "name": "after", "memory_mb": 512,
        "begin_at": begin.isoformat()})
    assert status == 200, body
    _, shown = await call(http, "GET", f"/api/v1/jobs/{job['id']}")
    assert (shown["priority"], shown["time_limit"], shown["cpus"], shown["name"],
            shown["memory_mb"]) == (42, 120, 4, "after", 512)
    assert shown["begin_at"] == begin.isoformat().replace("+00:00", "Z")
    assert shown["reason"] == "BeginTime"
    # removing the begin time puts the job back in the queue
    _, body = await call(http, "PATCH", f"/api/v1/jobs/{job['id']}", {"begin_at": None})
    assert body["begin_at"] is None and body["reason"] == "Priority"


async def test_patch_refusals(http: TestClient[Any, Any], pool: asyncpg.Pool[Any]) -> None:
    job = await submit(http)
    path = f"/api/v1/jobs/{job['id']}"
    for body, status, words in [
        ({}, 400, "fields to change"), ({"script": "x"}, 400, "cannot change script"),
        ({"cpus": 9}, 422, "never be satisfied"), ({"cpus": 0}, 400, "'cpus'"),
        ({"priority": 500}, 403, "only an admin"), ({"name": ""}, 400, "'name'"),
        ({"begin_at": "soon"}, 400, "ISO 8601"), ({"cpus": None}, 400, "'cpus'"),
    ]:
        got, answer = await call(http, "PATCH", path, body)
        assert (got, words in answer["error"]["message"]) == (status, True), (body, answer)
    await running(pool, job["id"])
    got, answer = await call(http, "PATCH", path, {"cpus": 2})
    assert got == 409
    assert answer["error"]["message"] == (f"job {job['id']} is RUNNING; only a PENDING job can "
                                          "be updated")
    got, answer = await call(http, "PATCH", "/api/v1/jobs/999999", {"cpus": 2})
    assert got == 404


async def test_requeue_a_finished_job_then_a_running_one(
    http: TestClient[Any, Any], pool: asyncpg.Pool[Any], redis: Redis, keys: Keys
) -> None:
    job = await submit(http, retries=2)
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert status == 409 and "only a RUNNING or finished job" in body["error"]["message"]
    await running(pool, job["id"])
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert status == 202 and body["state"] == "RUNNING" and body["requeue_requested"]
    [(_, fields)] = await redis.xrange(keys.control("big"))
    stop = decode(fields["e"])
    assert isinstance(stop, CancelRequested) and stop.requeue and stop.job_id == job["id"]
    # the executor stops it; the lifecycle turns the end into a new attempt
    t = TransitionStore(pool)
    current = await JobStore(pool).get(job["id"])
    assert current is not None
    ended = await t.finish(current, current.state.CANCELLED, exit_code=None, signal=15,
                           reason="requeue requested", usage=Usage(), again_after_s=None,
                           retry=False)
    assert ended is not None and ended.again and ended.job.attempt == 2
    # a cancel wins over a requeue asked for earlier
    assert await t.place([(job["id"], 2, "big")]) and await t.start(job["id"], 2, "big")
    assert (await call(http, "DELETE", f"/api/v1/jobs/{job['id']}"))[0] == 202
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert status == 409 and "being cancelled" in body["error"]["message"]
    current = await JobStore(pool).get(job["id"])
    assert current is not None
    ended = await t.finish(current, current.state.NODE_FAIL, exit_code=None, signal=None,
                           reason="lost", usage=Usage(), again_after_s=0.0, retry=False)
    assert ended is not None and not ended.again and ended.job.state == "CANCELLED"
    status, body = await call(http, "POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert status == 200 and (body["state"], body["attempt"]) == ("PENDING", 3)
    assert body["retries_used"] == 0 and not body["cancel_requested"]
    _, attempts = await call(http, "GET", f"/api/v1/jobs/{job['id']}/attempts")
    assert [(a["attempt"], a["state"], a["worker_id"]) for a in attempts["items"]] == [
        (1, "CANCELLED", "big"), (2, "CANCELLED", "big")]
    assert attempts["items"][0]["reason"] == "requeue requested"


BAD_IDS = ["%C2%B2", "%D9%A3", "99999999999999999999", "1000000000000000000", "-1", "1.5",
           "1e3", "0x10", "%00", "%20%31", "a" * 300, "%ED%A0%80"]
BAD_QUERIES = [
    "cursor=99999999999999999999", "cursor=%C2%B2", "cursor=-5", "name=%00", "user=%00",
    "name=" + "n" * 500, "limit=%C2%B2", "limit=99999999999999999999", "limit=-1",
    "since=yesterday", "until=%00", "since=99999-01-01", "state=%00", "state=" + "X" * 5000,
]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_job_ids_are_4xx_on_every_route(http: TestClient[Any, Any], bad: str) -> None:
    for method, path in [("GET", "/api/v1/jobs/{}"), ("GET", "/api/v1/jobs/{}/log"),
                         ("GET", "/api/v1/jobs/{}/attempts"), ("DELETE", "/api/v1/jobs/{}"),
                         ("POST", "/api/v1/jobs/{}/hold"), ("POST", "/api/v1/jobs/{}/release"),
                         ("POST", "/api/v1/jobs/{}/requeue"), ("PATCH", "/api/v1/jobs/{}")]:
        resp = await http.request(method, path.format(bad), json={"cpus": 1})
        assert 400 <= resp.status < 500, (method, path, bad, resp.status, await resp.text())
        assert (await resp.json())["error"]["message"]


@pytest.mark.parametrize("query", BAD_QUERIES)
async def test_bad_queries_are_4xx(http: TestClient[Any, Any], query: str) -> None:
    job = await submit(http)
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{job['id']}/log"):
        resp = await http.get(f"{path}?{query}&attempt={query.split('=', 1)[1]}")
        assert 400 <= resp.status < 500 or (resp.status == 200 and "log" in path), \
            (path, query, resp.status, await resp.text())


@pytest.mark.parametrize("field", ["name", "submit_dir"])
async def test_unencodable_text_is_400(http: TestClient[Any, Any], field: str) -> None:
    raw = b'{"script": "true", "' + field.encode() + b'": "\\ud800"}'
    resp = await http.post("/api/v1/jobs", data=raw,
                           headers={"Content-Type": "application/json"})
    assert 400 <= resp.status < 500, await resp.text()


async def test_listings_never_carry_scripts_or_environments(http: TestClient[Any, Any]) -> None:
    job = await submit(http, env={"SECRET": "x"})
    page = await (await http.get("/api/v1/jobs")).json()
    assert "env" not in page["items"][0] and "script" not in page["items"][0]
    full = await (await http.get(f"/api/v1/jobs/{job['id']}")).json()
    assert full["env"] == {"SECRET": "x"} and full["script"] == "true"
    assert orjson.dumps(page).count(b"SECRET") == 0
