"""Connecting to Redis and PostgreSQL at service start-up, patiently.

A service that starts before its database (a cluster coming up, a PostgreSQL failover) waits
with backoff and logs why, instead of exiting into a crash loop.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from shared.db.migrate import migrate
from shared.db.pool import ACQUIRE_TIMEOUT_S, STATEMENT_TIMEOUT_S, create_pool

log = logging.getLogger(__name__)

_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _retrying(what: str, give_up_after_s: float | None) -> AsyncRetrying:
    return AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        stop=stop_after_delay(give_up_after_s) if give_up_after_s else stop_never,
        retry=retry_if_exception_type((*_PG_ERRORS, RedisError)),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


async def wait_for_redis(redis: Redis, *, give_up_after_s: float | None = None) -> None:
    async for attempt in _retrying("redis", give_up_after_s):
        with attempt:
            await redis.ping()


async def open_database(
    dsn: str, *, application_name: str, max_size: int = 10, run_migrations: bool = True,
    give_up_after_s: float | None = None, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> asyncpg.Pool[Any]:
    """Migrate (idempotent, concurrency-safe) and open a pool, retrying until PostgreSQL answers.
    The timeouts are the pool's (shared/db/pool.py: SCNS_DB_ACQUIRE_TIMEOUT_S,
    SCNS_STATEMENT_TIMEOUT_S)."""
    async for attempt in _retrying("postgresql", give_up_after_s):
        with attempt:
            if run_migrations:
                await migrate(dsn)
            return await create_pool(dsn, max_size=max_size, application_name=application_name,
                                     acquire_timeout_s=acquire_timeout_s,
                                     statement_timeout_s=statement_timeout_s)
    raise AssertionError("unreachable")  # pragma: no cover


async def migrate_patiently(dsn: str, *, give_up_after_s: float | None = None) -> list[int]:
    """`migrate`, retrying while PostgreSQL does not answer (not on a refusal: a role that may
    not change the schema fails at once, see shared/db/migrate.py)."""
    async for attempt in _retrying("postgresql", give_up_after_s):
        with attempt:
            return await migrate(dsn)
    raise AssertionError("unreachable")  # pragma: no cover
