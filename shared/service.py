"""What every service's entry point does the same way: settings, logging, connections (patiently),
the process's wiring (built once), signals, health endpoints, and an orderly close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import clock, failpoints, logs, preflight, runtime
from shared.db import UNAVAILABLE
from shared.health import HealthServer
from shared.infra import migrate_patiently, open_database, wait_for_redis
from shared.redis import connect
from shared.settings import Settings
from shared.wiring import Wiring


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    redis: Redis
    pool: asyncpg.Pool[Any]
    stop: asyncio.Event
    wiring: Wiring


ReadyCheck = Callable[[Context], Awaitable[dict[str, bool]]]


async def reachable(redis: Redis, pool: asyncpg.Pool[Any]) -> dict[str, bool]:
    """Whether each datastore answers now (the `checks` of every `/readyz`)."""
    checks = {"redis": True, "postgresql": True}
    try:
        await redis.ping()
    except RedisError:
        checks["redis"] = False
    try:
        await pool.fetchval("SELECT 1")
    except UNAVAILABLE:
        checks["postgresql"] = False
    return checks


async def ready_if_reachable(ctx: Context) -> dict[str, bool]:
    return await reachable(ctx.redis, ctx.pool)


@asynccontextmanager
async def started(
    name: str, *, pool_size: int, label: str | None = None, ready: ReadyCheck | None = None,
    health: bool = True,
) -> AsyncIterator[Context]:
    """Configure, connect (waiting for Redis and PostgreSQL), check both (shared/preflight.py:
    a refusal is a PreflightError), migrate or wait for the schema, then install the
    SIGTERM/SIGINT handlers: before that point the default action (exit) is right, there is
    nothing to hand back yet."""
    settings = Settings.from_env()
    logs.configure(label or name, level=settings.log_level, fmt=settings.log_format)
    failpoints.configure(settings.failpoint)
    clock.configure(settings.clock_skew_s)
    redis = connect(settings.redis_url, name=f"scns-{name}")
    try:
        await wait_for_redis(redis)
        await preflight.check_redis(redis)
        pool = await open_database(settings.database_url, application_name=f"scns-{name}",
                                   max_size=pool_size, run_migrations=False,
                                   acquire_timeout_s=settings.db_acquire_timeout_s,
                                   statement_timeout_s=settings.statement_timeout_s)
    except BaseException:
        await redis.aclose()
        raise
    try:
        await preflight.check_postgres(pool, settings.database_url)
        await preflight.clock_offset(pool)
        if settings.migrate_on_start:
            await migrate_patiently(settings.database_url)
        else:
            await preflight.wait_for_schema(pool)
    except BaseException:
        await pool.close()
        await redis.aclose()
        raise
    stop = asyncio.Event()
    runtime.stop_on_signals(stop)
    ctx = Context(settings=settings, redis=redis, pool=pool, stop=stop,
                  wiring=Wiring.build(settings, redis, pool))
    check = ready or ready_if_reachable
    server = HealthServer(host=settings.health_host,
                          port=settings.health_port if health else 0,
                          ready=lambda: check(ctx))
    await server.start()
    try:
        yield ctx
    finally:
        await server.stop()
        await pool.close()
        await redis.aclose()
