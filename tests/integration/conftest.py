"""Fixtures of the gateway tests: the aiohttp application in-process, on this test's Redis
prefix and database, with one live 8-CPU worker ("big") so that submissions are checked
against a real cluster size, called with user ann's token. Every answer a test gets through
`http` is checked against the OpenAPI document when the test ends (tests/openapi_check.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.db.tokens import TokenStore
from shared.keys import Keys
from shared.membership import Membership
from shared.settings import Settings
from shared.wiring import Wiring
from tests.helpers import add_worker, wire
from tests.openapi_check import Recorder


async def bearer(pool: asyncpg.Pool[Any], user: str, role: str = "user") -> dict[str, str]:
    """The Authorization header of a new token for `user`."""
    _, token = await TokenStore(pool).create(user, role)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], keys: Keys
               ) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the gateway that sends user ann's token (every request; a test passes
    `headers=await bearer(pool, ...)` to call as someone else)."""
    await add_worker(Membership(redis, keys), "big", cpus=8, memory_mb=4096)
    app = create_app(wire(settings, redis, pool))
    recorder = Recorder()
    app.middlewares.insert(0, recorder.middleware)  # outermost: sees what the client gets
    client: TestClient[Any, Any] = TestClient(TestServer(app), headers=await bearer(pool, "ann"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
    # every answer this test saw is one the OpenAPI document promises (tests/openapi_check.py)
    assert recorder.problems() == []


@pytest.fixture
async def wiring(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any],
                 http: TestClient[Any, Any]) -> Wiring:
    """A process's parts beside the gateway (worker "big" live), with the allocation records
    open, as after a reconcile: for tests that drive the lifecycle themselves."""
    w = wire(settings, redis, pool)
    await w.allocator.restore([], epoch="test")
    return w
