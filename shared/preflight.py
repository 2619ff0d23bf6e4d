"""Start-up checks of the datastores: a Redis or a PostgreSQL that would break our guarantees
quietly is refused at start, with one message that says what to change.

- Redis must never evict (`maxmemory-policy noeviction`): an evicting Redis drops worker
  leases (`volatile-*` evicts keys with a TTL first: exactly the leases), allocation records
  and unacknowledged stream entries, and the cluster then fails jobs that are running. Redis
  Cluster is not supported (one primary, with replicas and failover, is). Redis 6.2 or newer
  (XAUTOCLAIM).
- PostgreSQL 13 or newer, reached directly or through a session-mode pooler: leadership and
  migrations use session advisory locks, which a transaction-mode pooler (PgBouncer
  `pool_mode = transaction`, RDS Proxy pinning aside) hands to whichever client runs next.
  Detected by two of our connections seeing the same server process, or by the pooler
  losing a prepared statement between two transactions.
- Without `SCNS_MIGRATE_ON_START`, a service waits until the schema is at its version
  (`scns migrate`, a Kubernetes Job in production) instead of running against an older one.

A refusal is a `PreflightError`: the entry point logs its message and exits with status 78
(EX_CONFIG), no traceback. A check the server does not let us make (a managed Redis that
hides INFO sections) is logged as a warning and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import clock
from shared.db.migrate import current_version, load_migrations
from shared.db.pool import connect
from shared.errors import PreflightError

log = logging.getLogger(__name__)

__all__ = ["PreflightError", "check_postgres", "check_redis", "transaction_pooler",
           "wait_for_schema"]

EXIT_CODE = 78  # EX_CONFIG (sysexits.h): the environment is wrong, retrying will not help
MIN_REDIS = (6, 2)
MIN_POSTGRES = 130000  # server_version_num of 13.0
SCHEMA_WAIT_LOG_S = 30.0


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def redis_problems(info: dict[str, Any]) -> list[str]:
    """What is wrong with a Redis, given its `INFO server`, `memory` and `cluster` fields."""
    out: list[str] = []
    policy = info.get("maxmemory_policy")
    if policy is not None and policy != "noeviction":
        out.append(
            f"Redis maxmemory-policy is {policy}; SCNS needs noeviction: an evicting Redis "
            "drops worker leases and allocation records (volatile-* policies evict keys with "
            "a TTL first, which are exactly the leases) and running jobs are then failed. Set "
            "`maxmemory-policy noeviction` (CONFIG SET, redis.conf, or the managed service's "
            "parameter group)")
    if str(info.get("cluster_enabled", "0")) == "1":
        out.append(
            "Redis runs in cluster mode, which SCNS does not support; use one primary (with "
            "replicas and automatic failover, e.g. Sentinel or a managed non-cluster Redis)")
    version = info.get("redis_version")
    if version is not None and _version(str(version))[:2] < MIN_REDIS:
        out.append(f"Redis {version} is too old; SCNS needs Redis "
                   f"{'.'.join(map(str, MIN_REDIS))} or newer (XAUTOCLAIM)")
    return out


async def check_redis(redis: Redis) -> None:
    """Raise PreflightError naming every problem of this Redis."""
    info: dict[str, Any] = {}
    for section in ("server", "memory", "cluster"):
        try:
            info.update(await redis.info(section))
        except ResponseError as e:  # a managed Redis may rename or hide INFO sections
            log.warning("cannot read Redis INFO %s (%s): not checked; make sure Redis never "
                        "evicts (maxmemory-policy noeviction) and is not in cluster mode",
                        section, e, extra={"event": "preflight-skipped"})
    problems = redis_problems(info)
    if problems:
        raise PreflightError("refusing to start: " + "; ".join(problems))


async def transaction_pooler(dsn: str) -> bool:
    """Whether `dsn` reaches PostgreSQL through a transaction-mode pooler.

    Two connections of ours are two sessions: directly or through a session-mode pooler they
    have different server processes for as long as both are open. A transaction-mode pooler
    gives the first one's server process to the second one's transaction as soon as the first
    one's statement is done; it may also lose the prepared statement asyncpg made in one
    transaction before the next one uses it.
    """
    first = await connect(dsn, application_name="scns-preflight")
    try:
        second = await connect(dsn, application_name="scns-preflight")
        try:
            pid = await first.fetchval("SELECT pg_backend_pid()")
            async with second.transaction():
                other = await second.fetchval("SELECT pg_backend_pid()")
            again = await first.fetchval("SELECT pg_backend_pid()")
        finally:
            await second.close()
    except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError):
        return True
    finally:
        await first.close()
    return bool(pid == other or pid != again)


async def check_postgres(pool: asyncpg.Pool[Any], dsn: str) -> None:
    """Raise PreflightError naming every problem of this PostgreSQL."""
    problems: list[str] = []
    version = int(await pool.fetchval("SELECT current_setting('server_version_num')::int"))
    if version < MIN_POSTGRES:
        problems.append(f"PostgreSQL {version // 10000} is too old; SCNS needs 13 or newer")
    if await transaction_pooler(dsn):
        problems.append(
            "SCNS_DATABASE_URL reaches PostgreSQL through a transaction-mode pooler (e.g. "
            "PgBouncer pool_mode = transaction): leadership and migrations hold session "
            "advisory locks, which such a pooler hands to other clients. Connect directly, or "
            "through a pooler in session mode")
    if problems:
        raise PreflightError("refusing to start: " + "; ".join(problems))


def needed_version() -> int:
    return max(m.version for m in load_migrations())


async def wait_for_schema(pool: asyncpg.Pool[Any], *, poll_s: float = 2.0) -> int:
    """Wait until PostgreSQL's schema is at least this build's (`scns migrate` makes it so);
    log why every SCHEMA_WAIT_LOG_S. A newer schema is fine: migrations only add, so the
    previous release keeps running while the next one rolls out. Returns the version found."""
    need = needed_version()
    said = 0.0
    while True:
        async with pool.acquire() as conn:
            have = await current_version(conn)
        if have >= need:
            return have
        now = time.monotonic()
        if now - said >= SCHEMA_WAIT_LOG_S:
            log.warning(
                "the database schema is at version %d, this build needs %d: waiting for `scns "
                "migrate` (SCNS_MIGRATE_ON_START is off; in Kubernetes, the scns-migrate Job)",
                have, need, extra={"event": "waiting-for-schema", "have": have, "need": need})
            said = now
        await asyncio.sleep(poll_s)


CLOCK_OFFSET = Gauge("scns_clock_offset_seconds",
                     "This process's wall clock minus PostgreSQL's, measured at start-up")
CLOCK_WARN_S = 1.0


async def clock_offset(pool: asyncpg.Pool[Any]) -> float:
    """This process's wall clock minus PostgreSQL's (the round trip's midpoint), recorded in
    `scns_clock_offset_seconds` and logged as a warning beyond a second. Nothing safe depends
    on it (shared/fencing.py): log lines and displayed times of the two disagree, that is all."""
    before = clock.time()
    theirs = float(await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
    offset = (before + clock.time()) / 2 - theirs
    CLOCK_OFFSET.set(round(offset, 3))
    if abs(offset) > CLOCK_WARN_S:
        log.warning("this host's clock is %+.1f s off PostgreSQL's: scheduling is not affected "
                    "(the times it compares are PostgreSQL's), but log and displayed times "
                    "will disagree; check NTP", offset,
                    extra={"event": "clock-offset", "offset_s": round(offset, 3)})
    return offset
