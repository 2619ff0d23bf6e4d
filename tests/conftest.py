"""Fixtures: a real Redis and a real PostgreSQL, with every test isolated.

Isolation: each test gets its own Redis key prefix (its own hash tag, so its keys never collide
with another test's and cleanup is a SCAN of that prefix) and its own PostgreSQL database,
cloned from a template database migrated once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.keys import Keys
from shared.redis import connect
from shared.settings import Settings
from tests.helpers import open_for_jobs
from tests.infra import Infra, provide

TEMPLATE_DB = f"scns_tpl_{uuid.uuid4().hex[:8]}"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide() as found:
        asyncio.run(_create_template(found.postgres_url))
        try:
            yield found
        finally:
            asyncio.run(_drop_database(found.postgres_url, TEMPLATE_DB))


async def _create_template(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    await migrate(with_database(admin_url, TEMPLATE_DB))


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pytest_report_header(config: pytest.Config) -> str:
    return "scns infra: chosen at session start (see tests/infra.py for the order)"


@pytest.fixture
def key_prefix() -> str:
    return f"{{t{uuid.uuid4().hex[:12]}}}:"


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
async def redis(infra: Infra, keys: Keys) -> AsyncIterator[Redis]:
    client = connect(infra.redis_url, name="scns-test")
    try:
        yield client
    finally:
        batch: list[str] = []
        async for key in client.scan_iter(match=keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
        await client.aclose()


@contextlib.asynccontextmanager
async def _scratch_database(infra: Infra, prefix: str, template: str | None
                            ) -> AsyncIterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(infra.postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"'
                           + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    try:
        yield with_database(infra.postgres_url, name)
    finally:
        await _drop_database(infra.postgres_url, name)


@pytest.fixture
async def database_url(infra: Infra) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    async with _scratch_database(infra, "t", TEMPLATE_DB) as url:
        yield url


@pytest.fixture
async def empty_database_url(infra: Infra) -> AsyncIterator[str]:
    """A fresh database with no schema (for migration tests)."""
    async with _scratch_database(infra, "e", None) as url:
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await create_pool(database_url, max_size=5, application_name="scns-test")
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def settings(infra: Infra, database_url: str, key_prefix: str, tmp_path: Any) -> Settings:
    """Settings for services under test: this test's database and prefix, fast timings.

    No request rate limit: a test that submits in a loop would otherwise pass or fail by how fast
    the machine is (a 429 once it outruns 50 a second). The tests of the limit set their own."""
    return Settings(
        redis_url=infra.redis_url, database_url=database_url, key_prefix=key_prefix,
        worker_id="test-worker", heartbeat_s=0.5, worker_ttl_s=2.0, registry_sweep_s=0.2,
        claim_idle_ms=500, max_deliveries=3, data_dir=tmp_path / "data",
        log_format="text", log_level="INFO", rate_limit_rps=0.0,
    )


@pytest.fixture
def job_tmp_path(tmp_path: Path) -> Path:
    """`tmp_path`, reachable and writable by the jobs of a root executor (see open_for_jobs)."""
    return open_for_jobs(tmp_path)
