"""Apply the ordered SQL files in `migrations/` once each, safely from many processes at once.

Every service may run this at start-up (SCNS_MIGRATE_ON_START, the default): a session-level
PostgreSQL advisory lock (scoped to the database) serialises the runners, and the
`scns_schema_version` table records what was applied with a checksum, so a migration edited
after it shipped is refused instead of silently skipped.

In production the schema belongs to a role the services do not have: `scns migrate` runs with
it (a Kubernetes Job) and then grants the runtime role what `grants.sql` lists, read and write
rows and nothing else; the services start with SCNS_MIGRATE_ON_START=0 and wait for the
schema (shared/preflight.py). Against an up-to-date schema this module changes nothing, so a
runtime role with migrations left on is harmless; one that would have to migrate is refused
with a message, not retried.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from shared.db.pool import connect
from shared.errors import ConductorError, PreflightError

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x5C_45_C0_DE  # arbitrary, constant: "scns" migration lock
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    out: list[Migration] = []
    for entry in resources.files("shared.db").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(version=int(m[1]), name=m[2], sql=entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ConductorError(f"duplicate migration versions in {versions}")
    return out


async def migrate(dsn: str) -> list[int]:
    """Bring the database to the newest schema; returns the versions applied by this call."""
    conn = await connect(dsn, application_name="scns-migrate")
    try:
        return await migrate_conn(conn)
    finally:
        await conn.close()


async def migrate_conn(conn: asyncpg.Connection[Any]) -> list[int]:
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        return await _apply(conn)
    except asyncpg.InsufficientPrivilegeError as e:
        user = await conn.fetchval("SELECT current_user")
        raise PreflightError(
            f"the database role {user!r} may not change the schema ({e}); migrations need the "
            "schema owner's role: set SCNS_MIGRATE_ON_START=0 for the services and run `scns "
            "migrate` with SCNS_MIGRATE_DATABASE_URL set to the owner's URL") from e
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def _apply(conn: asyncpg.Connection[Any]) -> list[int]:
    # CREATE ... IF NOT EXISTS needs the right to create even when the table exists.
    if not await conn.fetchval("SELECT to_regclass('scns_schema_version') IS NOT NULL"):
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS scns_schema_version (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    rows = await conn.fetch("SELECT version, checksum FROM scns_schema_version")
    applied = {r["version"]: r["checksum"] for r in rows}
    done: list[int] = []
    for m in load_migrations():
        if m.version in applied:
            if applied[m.version] != m.checksum:
                raise ConductorError(
                    f"migration {m.version:04d}_{m.name} changed after it was applied; "
                    "add a new migration instead of editing a shipped one"
                )
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO scns_schema_version (version, name, checksum) "
                "VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum,
            )
        log.info("applied migration %04d_%s", m.version, m.name,
                 extra={"event": "migration-applied", "version": m.version})
        done.append(m.version)
    return done


def grants_sql() -> str:
    return resources.files("shared.db").joinpath("grants.sql").read_text("utf-8")


async def grant_runtime(conn: asyncpg.Connection[Any], role: str) -> None:
    """Give `role` (the services' runtime role) what grants.sql lists on every table and
    sequence of the current schema: idempotent, so it runs after every `scns migrate`."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        raise PreflightError(f"no database role {role!r} to grant the runtime privileges to; "
                             "create it first (deploy/sql/roles.sql)")
    names = await conn.fetchrow("SELECT quote_ident($1) AS role, "
                                "quote_ident(current_schema()) AS schema", role)
    assert names is not None
    sql = grants_sql().replace("{role}", names["role"]).replace("{schema}", names["schema"])
    async with conn.transaction():
        await conn.execute(sql)
    log.info("granted the runtime privileges to %s", role,
             extra={"event": "grants-applied", "role": role})


async def current_version(
        conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    exists = await conn.fetchval("SELECT to_regclass('scns_schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM scns_schema_version")
    return int(version)
