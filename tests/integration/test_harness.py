from __future__ import annotations

from typing import Any

import asyncpg
from redis.asyncio import Redis

from shared.db.migrate import current_version, load_migrations
from shared.keys import Keys
from tests.infra import Infra


async def test_redis_is_real_and_isolated(redis: Redis, keys: Keys, infra: Infra) -> None:
    info = await redis.info("server")
    assert "redis_version" in info or "valkey_version" in info
    await redis.set(keys.lock("probe"), "1")
    found = [k async for k in redis.scan_iter(match=keys.pattern())]
    assert found == [keys.lock("probe")]
    print("infra sources:", infra.sources)


async def test_each_test_gets_a_migrated_database_of_its_own(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    async with pool.acquire() as conn:
        assert await current_version(conn) == load_migrations()[-1].version
        name = await conn.fetchval("SELECT current_database()")
        assert database_url.endswith("/" + name)
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
        await conn.execute("INSERT INTO jobs (script, cpus) VALUES ('true', 1)")


async def test_previous_test_left_no_rows(pool: asyncpg.Pool[Any]) -> None:
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0
