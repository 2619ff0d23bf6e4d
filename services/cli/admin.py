"""Operator commands that talk to the datastores directly, not through the gateway:
`scns migrate` (the schema; a Kubernetes Job in production) and `scns check` (the start-up
checks every service makes, run on demand: before a first deploy, after a datastore change)."""

from __future__ import annotations

import os

import asyncpg
from redis.exceptions import RedisError
from rich.markup import escape

from services.cli.common import err, out
from shared import preflight
from shared.db.migrate import current_version, grant_runtime
from shared.db.pool import connect, create_pool
from shared.errors import ConfigError, InfraError, PreflightError
from shared.infra import migrate_patiently
from shared.redis import connect as redis_connect
from shared.settings import Settings, read_secret

_PG_DOWN = (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, TimeoutError)


def migration_url(settings: Settings) -> str:
    """SCNS_MIGRATE_DATABASE_URL(_FILE): the schema owner's URL; else the services' own."""
    errors: list[str] = []
    url = read_secret(os.environ, "SCNS_MIGRATE_DATABASE_URL", settings.database_url, errors)
    if not errors and not url.startswith(("postgresql://", "postgres://")):
        errors.append("SCNS_MIGRATE_DATABASE_URL must start with postgresql:// or postgres://")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return url


async def migrate_database(*, wait_s: float, grant_to: str | None) -> int:
    dsn = migration_url(Settings.from_env())
    try:
        # a transaction-mode pooler would break the migration lock: refuse before migrating
        if await _answers(dsn, wait_s) and await preflight.transaction_pooler(dsn):
            raise PreflightError("refusing to migrate through a transaction-mode pooler (its "
                                 "session advisory lock would not hold): connect directly")
        applied = await migrate_patiently(dsn, give_up_after_s=max(wait_s, 0.001))
        conn = await connect(dsn, application_name="scns-migrate")
        try:
            version = await current_version(conn)
            if grant_to:
                await grant_runtime(conn, grant_to)
        finally:
            await conn.close()
    except _PG_DOWN as e:
        raise InfraError(f"PostgreSQL did not answer within {wait_s:g}s "
                         f"({e.__class__.__name__}: {e}); --wait SECONDS waits longer") from e
    out.print(f"applied migrations {', '.join(map(str, applied))}; schema at version "
              f"{version}" if applied else f"schema is up to date (version {version})",
              highlight=False)
    if grant_to:
        out.print(f"granted role {escape(grant_to)} the runtime privileges (rows only)",
                  highlight=False)
    return 0


async def _answers(dsn: str, wait_s: float) -> bool:
    """True once PostgreSQL accepts a connection (retrying for `wait_s`)."""
    from shared.infra import open_database

    pool = await open_database(dsn, application_name="scns-migrate", max_size=1,
                               run_migrations=False, give_up_after_s=max(wait_s, 0.001))
    await pool.close()
    return True


async def check_datastores() -> int:
    """`scns check`: every start-up check, each reported; 0 when a service would start."""
    settings = Settings.from_env()
    failed = 0

    def report(name: str, problem: str | None) -> None:
        nonlocal failed
        if problem is None:
            out.print(f"[green]ok[/]    {name}")
        else:
            failed += 1
            out.print(f"[red]FAIL[/]  {name}: {escape(problem)}")

    redis = redis_connect(settings.redis_url, name="scns-check")
    try:
        await preflight.check_redis(redis)
        report("redis", None)
    except (RedisError, OSError) as e:
        report("redis", f"unreachable ({e})")
    except PreflightError as e:
        report("redis", str(e).removeprefix("refusing to start: "))
    finally:
        await redis.aclose()
    try:
        pool = await create_pool(settings.database_url, max_size=2,
                                 application_name="scns-check")
    except (*_PG_DOWN, asyncpg.PostgresError) as e:
        report("postgresql", f"unreachable ({e})")
        return 1
    try:
        try:
            await preflight.check_postgres(pool, settings.database_url)
            report("postgresql", None)
        except PreflightError as e:
            report("postgresql", str(e).removeprefix("refusing to start: "))
        async with pool.acquire() as conn:
            have = await current_version(conn)
        need = preflight.needed_version()
        report("schema", None if have >= need else
               f"at version {have}, this build needs {need}: run `scns migrate`")
    finally:
        await pool.close()
    if failed:
        err.print(f"{failed} check(s) failed: the services would refuse to start")
    return 1 if failed else 0
