"""Who may call what: every route x every kind of caller, against the real gateway, Redis and
PostgreSQL. Plus revocation time, listings without secrets, ownership filtered in SQL, and the
browser guards (JSON bodies only, no cross-origin requests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.db.jobs import JobSpec
from shared.db.tokens import TokenStore
from shared.keys import Keys
from shared.lifecycle import Lifecycle
from shared.membership import Membership
from shared.settings import Settings
from tests.helpers import add_worker, wire

CALLERS = ("none", "bad", "expired", "revoked", "user", "other", "admin")
PUBLIC = ("/healthz", "/readyz", "/api/v1/openapi.json")


@dataclass
class World:
    client: TestClient[Any, Any]
    pool: asyncpg.Pool[Any]
    lifecycle: Lifecycle
    headers: dict[str, dict[str, str]]  # caller -> headers
    token_ids: list[str]

    async def job(self, *, hold: bool = True, user: str = "ann") -> int:
        """A fresh job of `user`'s (held: it stays PENDING, no worker will take it)."""
        job, _ = await self.lifecycle.submit(JobSpec(script="echo hi\n", user=user, hold=hold,
                                                     name="mine"))
        return job.id

    async def cancelled(self) -> int:
        job_id = await self.job()
        await self.lifecycle.cancel(job_id)
        return job_id

    async def spare_token(self) -> str:
        row, _ = await TokenStore(self.pool).create("spare")
        return row.id


async def _tokens(pool: asyncpg.Pool[Any]) -> dict[str, dict[str, str]]:
    store = TokenStore(pool)
    _, user = await store.create("ann")
    _, other = await store.create("bob")
    _, admin = await store.create("root", "admin")
    expired_row, expired = await store.create("ann", expires_in_s=3600)
    await pool.execute("UPDATE tokens SET expires_at = now() - interval '1 second' "
                       "WHERE id = $1", expired_row.id)
    revoked_row, revoked = await store.create("ann", "admin")
    await store.revoke(revoked_row.id)

    def bearer(t: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {t}"}

    return {"none": {}, "bad": bearer("scns_" + "x" * 43), "expired": bearer(expired),
            "revoked": bearer(revoked), "user": bearer(user), "other": bearer(other),
            "admin": bearer(admin)}


@pytest.fixture
async def world(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], keys: Keys
                ) -> AsyncIterator[World]:
    await add_worker(Membership(redis, keys), "big", cpus=8, memory_mb=4096)
    wiring = wire(settings, redis, pool)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(wiring)))
    await client.start_server()
    try:
        yield World(client=client, pool=pool, lifecycle=wiring.lifecycle,
                    headers=await _tokens(pool), token_ids=[])
    finally:
        await client.close()


Setup = Callable[[World], Awaitable[tuple[str, str, Any]]]


def job_route(method: str, suffix: str = "", body: Any = None, *, prepare: str = "job"
              ) -> Setup:
    async def setup(w: World) -> tuple[str, str, Any]:
        job_id = await (w.cancelled() if prepare == "cancelled" else
                        w.job(hold=prepare != "pending"))
        return method, f"/api/v1/jobs/{job_id}{suffix}", body
    return setup


def fixed(method: str, path: str, body: Any = None) -> Setup:
    async def setup(_: World) -> tuple[str, str, Any]:
        return method, path, body
    return setup


async def _revoke_spare(w: World) -> tuple[str, str, Any]:
    return "DELETE", f"/api/v1/tokens/{await w.spare_token()}", None


DENIED = {"none": 401, "bad": 401, "expired": 401, "revoked": 401}
EVERYONE = {**DENIED, "user": 200, "other": 200, "admin": 200}
OWNER = {**DENIED, "user": 200, "other": 404, "admin": 200}
ADMIN = {**DENIED, "user": 403, "other": 403, "admin": 200}

# route -> (how to call it, the status each caller gets)
MATRIX: dict[str, tuple[Setup, dict[str, int]]] = {
    "list jobs": (fixed("GET", "/api/v1/jobs"), EVERYONE),
    "submit": (fixed("POST", "/api/v1/jobs", {"script": "echo hi"}),
               {**DENIED, "user": 201, "other": 201, "admin": 201}),
    "show job": (job_route("GET"), OWNER),
    "update job": (job_route("PATCH", body={"name": "renamed"}), OWNER),
    "cancel job": (job_route("DELETE"), OWNER),
    "hold job": (job_route("POST", "/hold", prepare="pending"), OWNER),
    "release job": (job_route("POST", "/release"), OWNER),
    "requeue job": (job_route("POST", "/requeue", prepare="cancelled"), OWNER),
    "attempts": (job_route("GET", "/attempts"), OWNER),
    "log": (job_route("GET", "/log"), OWNER),
    "workers": (fixed("GET", "/api/v1/workers"), EVERYONE),
    "drain": (fixed("POST", "/api/v1/workers/big/drain"), ADMIN),
    "resume": (fixed("POST", "/api/v1/workers/big/resume"), ADMIN),
    "resources": (fixed("GET", "/api/v1/resources"), EVERYONE),
    "queue stats": (fixed("GET", "/api/v1/queues/stats"), EVERYONE),
    # no reconciler runs in this test: an admin gets past auth to a 503 that says so
    "reconcile": (fixed("POST", "/api/v1/admin/reconcile"), {**ADMIN, "admin": 503}),
    "create token": (fixed("POST", "/api/v1/tokens", {"user": "carol"}),
                     {**ADMIN, "admin": 201}),
    "list tokens": (fixed("GET", "/api/v1/tokens"), ADMIN),
    "revoke token": (_revoke_spare, ADMIN),
    "metrics": (fixed("GET", "/metrics"), EVERYONE),
    "healthz": (fixed("GET", "/healthz"), dict.fromkeys(CALLERS, 200)),
    "readyz": (fixed("GET", "/readyz"), dict.fromkeys(CALLERS, 200)),
}
CELLS = [(route, caller) for route in MATRIX for caller in CALLERS]


def test_the_matrix_is_big_enough() -> None:
    assert len(CELLS) >= 60


@pytest.mark.parametrize(("route", "caller"), CELLS, ids=[f"{r}-{c}" for r, c in CELLS])
async def test_auth_matrix(world: World, route: str, caller: str) -> None:
    setup, expected = MATRIX[route]
    method, path, body = await setup(world)
    headers = dict(world.headers[caller])
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    resp = await world.client.request(method, path, **kwargs)
    text = await resp.text()
    assert resp.status == expected[caller], f"{method} {path} as {caller}: {text}"
    if resp.status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert orjson.loads(text)["error"]["code"] == "unauthorized"
    if resp.status in (403, 404):
        assert orjson.loads(text)["error"]["message"]
    if resp.status == 404 and route != "log":  # another user's job: nothing about it shows
        assert "mine" not in text and "echo" not in text


async def test_expired_and_revoked_tokens_say_so(world: World) -> None:
    for caller, word in (("expired", "expired"), ("revoked", "revoked"), ("bad", "not valid")):
        resp = await world.client.get("/api/v1/jobs", headers=world.headers[caller])
        assert resp.status == 401 and word in (await resp.json())["error"]["message"]
    for header in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer  ", "bearer nope"):
        resp = await world.client.get("/api/v1/jobs", headers={"Authorization": header})
        assert resp.status == 401


async def test_revocation_takes_effect_within_five_seconds_on_every_gateway(
    world: World, settings: Settings, redis: Redis, pool: asyncpg.Pool[Any],
) -> None:
    store = TokenStore(pool)
    row, token = await store.create("dave")
    auth = {"Authorization": f"Bearer {token}"}
    # a second gateway on the same database, which has the token cached
    other: TestClient[Any, Any] = TestClient(TestServer(create_app(wire(settings, redis,
                                                                          pool))))
    await other.start_server()
    try:
        assert (await other.get("/api/v1/jobs", headers=auth)).status == 200
        assert (await world.client.get("/api/v1/jobs", headers=auth)).status == 200
        revoked = await world.client.delete(f"/api/v1/tokens/{row.id}",
                                            headers=world.headers["admin"])
        assert revoked.status == 200 and (await revoked.json())["revoked_at"]
        # the gateway that revoked it refuses it at once
        assert (await world.client.get("/api/v1/jobs", headers=auth)).status == 401
        deadline = time.monotonic() + 5.0
        while (status := (await other.get("/api/v1/jobs", headers=auth)).status) == 200:
            assert time.monotonic() < deadline, "still accepted 5 s after its revocation"
            await _sleep(0.1)
        assert status == 401
    finally:
        await other.close()
    # revoking again is harmless; an unknown id is a 404
    again = await world.client.delete(f"/api/v1/tokens/{row.id}", headers=world.headers["admin"])
    assert again.status == 200
    missing = await world.client.delete("/api/v1/tokens/tnope", headers=world.headers["admin"])
    assert missing.status == 404


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def test_a_token_is_shown_once_and_stored_as_a_digest(world: World) -> None:
    resp = await world.client.post("/api/v1/tokens", json={"user": "erin", "role": "admin",
                                                           "expires_in_s": 600},
                                   headers=world.headers["admin"])
    made = await resp.json()
    assert resp.status == 201 and made["token"].startswith("scns_") and made["role"] == "admin"
    assert made["expires_at"] and made["created_by"] == "root"
    assert await world.pool.fetchval("SELECT count(*) FROM tokens WHERE digest::text LIKE $1",
                                      f"%{made['token']}%") == 0
    listed = await (await world.client.get("/api/v1/tokens", headers=world.headers["admin"])
                    ).json()
    mine = [t for t in listed["items"] if t["id"] == made["id"]]
    assert mine and "token" not in mine[0] and mine[0]["active"]
    assert made["token"] not in orjson.dumps(listed).decode()
    # the new token works, as an admin
    erin = {"Authorization": f"Bearer {made['token']}"}
    assert (await world.client.get("/api/v1/tokens", headers=erin)).status == 200


@pytest.mark.parametrize(("body", "words"), [
    ({}, "'user' is required"), ({"user": "a b"}, "'user'"), ({"user": "x" * 65}, "'user'"),
    ({"user": "ann", "role": "root"}, "'role'"), ({"user": "ann", "expires_in_s": 0},
                                                  "'expires_in_s'"),
    ({"user": "ann", "expires_in_s": "1h"}, "'expires_in_s'"),
    ({"user": "ann", "scope": "all"}, "unknown field"), ([1], "JSON object"),
])
async def test_bad_token_requests_are_400(world: World, body: Any, words: str) -> None:
    resp = await world.client.post("/api/v1/tokens", json=body, headers=world.headers["admin"])
    assert resp.status == 400
    assert words in (await resp.json())["error"]["message"]


async def test_lists_never_carry_script_or_env_and_are_filtered_in_sql(world: World) -> None:
    ann_job = await world.job()
    for _ in range(5):  # bob's jobs are newer: a filter after the fetch would page them first
        await world.job(user="bob")
    page = await (await world.client.get("/api/v1/jobs?limit=1",
                                         headers=world.headers["user"])).json()
    assert [j["id"] for j in page["items"]] == [ann_job]
    assert page["next_cursor"] is None
    for caller in ("user", "admin"):
        items = (await (await world.client.get("/api/v1/jobs", headers=world.headers[caller])
                        ).json())["items"]
        assert items and all("script" not in j and "env" not in j for j in items)
    everyone = (await (await world.client.get("/api/v1/jobs", headers=world.headers["admin"])
                       ).json())["items"]
    assert {j["user"] for j in everyone} == {"ann", "bob"}
    assert {j["user"] for j in (await (await world.client.get(
        "/api/v1/jobs?user=bob", headers=world.headers["admin"])).json())["items"]} == {"bob"}
    nosy = await world.client.get("/api/v1/jobs?user=bob", headers=world.headers["user"])
    assert nosy.status == 403
    # the full job (with its script) is its owner's, and the admin's
    shown = await (await world.client.get(f"/api/v1/jobs/{ann_job}",
                                          headers=world.headers["user"])).json()
    assert shown["script"] == "echo hi\n" and shown["env"] == {}


async def test_another_users_array_element_and_dependency_are_unknown(world: World) -> None:
    resp = await world.client.post("/api/v1/jobs", json={"script": "echo a", "array": "0-3",
                                                         "hold": True},
                                   headers=world.headers["user"])
    array_id = (await resp.json())["id"]
    for path in (f"/api/v1/jobs/{array_id}_2", f"/api/v1/jobs/{array_id}"):
        assert (await world.client.get(path, headers=world.headers["other"])).status == 404
        assert (await world.client.get(path, headers=world.headers["user"])).status == 200
    cancel = await world.client.delete(f"/api/v1/jobs/{array_id}", headers=world.headers["other"])
    assert cancel.status == 404
    dep = await world.client.post("/api/v1/jobs", json={"script": "echo b",
                                                        "dependency": f"afterok:{array_id}"},
                                  headers=world.headers["other"])
    assert dep.status == 400 and "unknown" in (await dep.json())["error"]["message"]
    mine = await world.client.post("/api/v1/jobs", json={"script": "echo b",
                                                         "dependency": f"afterok:{array_id}"},
                                   headers=world.headers["user"])
    assert mine.status == 201


async def test_reproduction_another_user_cannot_cancel_or_read_my_job(world: World) -> None:
    """The issue's reproduction: bob cancelling alice's job answered 202; now it is a 404 and
    the job is untouched."""
    job_id = await world.job(hold=False)
    resp = await world.client.delete(f"/api/v1/jobs/{job_id}", headers=world.headers["other"])
    assert resp.status == 404
    shown = await (await world.client.get(f"/api/v1/jobs/{job_id}",
                                          headers=world.headers["user"])).json()
    assert shown["state"] == "PENDING"
    # and the old way of claiming a name is gone: the header names nobody
    resp = await world.client.get("/api/v1/jobs", headers={"X-SCNS-User": "ann"})
    assert resp.status == 401


@pytest.mark.parametrize(("content_type", "status"), [
    (None, 415), ("text/plain", 415), ("application/x-www-form-urlencoded", 415),
    ("multipart/form-data; boundary=x", 415), ("application/json", 201),
])
async def test_bodies_must_be_json(world: World, content_type: str | None, status: int) -> None:
    """A form a web page could post without a CORS preflight is never read."""
    headers = dict(world.headers["user"])
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = await world.client.post("/api/v1/jobs", data=b'{"script": "echo hi"}',
                                   headers=headers, skip_auto_headers=["Content-Type"])
    assert resp.status == status, await resp.text()
    if status == 415:
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        assert await world.pool.fetchval("SELECT count(*) FROM jobs") == 0


@pytest.mark.parametrize(("headers", "status"), [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-origin"}, 201),
    ({}, 201),
])
async def test_cross_origin_browser_requests_are_refused(world: World, headers: dict[str, str],
                                                         status: int) -> None:
    resp = await world.client.post("/api/v1/jobs", json={"script": "echo hi"},
                                   headers={**world.headers["user"], **headers})
    assert resp.status == status, await resp.text()
    if status == 403:
        assert (await resp.json())["error"]["code"] == "cross_origin"


async def test_same_origin_is_accepted(world: World) -> None:
    host = f"{world.client.host}:{world.client.port}"
    resp = await world.client.get("/api/v1/jobs", headers={**world.headers["user"],
                                                           "Origin": f"http://{host}"})
    assert resp.status == 200


async def test_public_endpoints_need_no_token(world: World) -> None:
    for path in PUBLIC[:2]:
        assert (await world.client.get(path)).status == 200
