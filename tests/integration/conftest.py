"""Fixtures of the gateway tests: the aiohttp application in-process, on this test's Redis
prefix and database, with one live 8-CPU worker ("big") so that submissions are checked
against a real cluster size."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.keys import Keys
from shared.membership import Membership
from shared.settings import Settings
from tests.helpers import add_worker, wire


@pytest.fixture
async def http(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], keys: Keys
               ) -> AsyncIterator[TestClient[Any, Any]]:
    await add_worker(Membership(redis, keys), "big", cpus=8, memory_mb=4096)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(wire(settings, redis,
                                                                           pool))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
