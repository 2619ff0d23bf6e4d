"""asyncpg pools and connections with jsonb mapped through orjson."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


def server_settings(application_name: str) -> dict[str, str]:
    """Startup parameters of every connection we open: only those a pooler passes on
    (PgBouncer refuses a connection whose startup packet names any other setting)."""
    return {"application_name": application_name}


async def _init(conn: asyncpg.Connection[Any]) -> None:
    # JIT off, for the session: our statements are short and indexed, and PostgreSQL's estimate
    # for one that reads little can still pass jit_above_cost (throttled_arrays' per-array
    # counts over a large queue did, on every pass): compiling took 10-50 ms of a statement
    # that runs in under one. A SET rather than a startup parameter, which PgBouncer refuses.
    await conn.execute("SET jit = off")
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _reset(conn: asyncpg.Connection[Any]) -> None:
    """Replaces asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL,
    pg_advisory_unlock_all: a round trip and server work on every release). Our pooled
    connections never change session state: SET, LISTEN, cursors and session advisory locks
    live on dedicated connections. asyncpg still rolls back an open transaction before calling
    this (tests/integration/test_db.py checks it)."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, application_name: str = "scns"
) -> asyncpg.Pool[asyncpg.Record]:
    pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init,
        reset=_reset,
        command_timeout=30,
        server_settings=server_settings(application_name),
    )
    return pool


async def connect(dsn: str, *, application_name: str = "scns") -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, server_settings=server_settings(application_name)
    )
    await _init(conn)
    return conn
