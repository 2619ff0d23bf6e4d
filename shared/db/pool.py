"""asyncpg pools and connections with jsonb mapped through orjson, and a limit on every wait.

- Connecting: CONNECT_TIMEOUT_S, pooled and dedicated connections alike (asyncpg's own default
  is a minute).
- A statement on a pooled connection: `statement_timeout`, set per session (PostgreSQL cancels
  the statement: a QueryCanceledError, which shared/db's UNAVAILABLE counts as "retry later"),
  and asyncpg's `command_timeout` COMMAND_MARGIN_S later as the client's own backstop for a
  server or network that stopped answering altogether.
- A free connection: every acquire has a timeout, the implicit ones of `pool.fetch`,
  `fetchrow`, `execute` and friends included (asyncpg's Pool calls `self.acquire()` without
  one, so `Pool` below supplies its default); running out raises `PoolBusy`.

Dedicated connections (`connect`: migrations, leadership, preflight) get the connect timeout
only, and a command timeout where the caller asks: a migration waits on an advisory lock for as
long as another replica migrates.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from shared.errors import PoolBusy

CONNECT_TIMEOUT_S = 10.0
# the defaults of SCNS_DB_ACQUIRE_TIMEOUT_S and SCNS_STATEMENT_TIMEOUT_S (shared/settings.py)
ACQUIRE_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 30.0
COMMAND_MARGIN_S = 5.0  # the server's statement_timeout fires first, with a clearer error

if TYPE_CHECKING:
    _PoolBase = asyncpg.Pool[asyncpg.Record]
    _AcquireBase = PoolAcquireContext[asyncpg.Record]
else:  # asyncpg's classes are generic in the stubs only
    _PoolBase = asyncpg.Pool
    _AcquireBase = PoolAcquireContext


def server_settings(application_name: str) -> dict[str, str]:
    """Startup parameters of every connection we open: only those a pooler passes on
    (PgBouncer refuses a connection whose startup packet names any other setting)."""
    return {"application_name": application_name}


async def _init(conn: asyncpg.Connection[Any], *, statement_timeout_s: float | None = None
                ) -> None:
    # JIT off, for the session: our statements are short and indexed, and PostgreSQL's estimate
    # for one that reads little can still pass jit_above_cost (throttled_arrays' per-array
    # counts over a large queue did, on every pass): compiling took 10-50 ms of a statement
    # that runs in under one. SETs rather than startup parameters, which PgBouncer refuses;
    # one round trip for both (a simple query may hold several statements).
    sql = "SET jit = off"
    if statement_timeout_s:
        sql += f"; SET statement_timeout = {max(1, round(statement_timeout_s * 1000))}"
    await conn.execute(sql)
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _reset(conn: asyncpg.Connection[Any]) -> None:
    """Replaces asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL,
    pg_advisory_unlock_all: a round trip and server work on every release). Our pooled
    connections never change session state after `_init`: LISTEN, cursors and session advisory
    locks live on dedicated connections. asyncpg still rolls back an open transaction before
    calling this (tests/integration/test_db.py checks it)."""


class _Acquire(_AcquireBase):
    """asyncpg's acquire context; a timeout while waiting for a connection is `PoolBusy`."""

    __slots__ = ()

    def _busy(self) -> PoolBusy:
        pool = self.pool
        return PoolBusy(f"no PostgreSQL connection came free within {self.timeout:g} s (a pool "
                        f"of {pool.get_max_size()}, {pool.get_idle_size()} idle)")

    async def __aenter__(self) -> PoolConnectionProxy[asyncpg.Record]:
        try:
            return await super().__aenter__()
        except TimeoutError as e:
            raise self._busy() from e

    def __await__(self) -> Generator[Any, None, PoolConnectionProxy[asyncpg.Record]]:
        try:
            return (yield from super().__await__())
        except TimeoutError as e:
            raise self._busy() from e


class Pool(_PoolBase):
    """asyncpg's pool whose every acquire waits at most `acquire_timeout_s` unless the caller
    gives its own timeout (made by `create_pool`, as asyncpg.create_pool makes its own)."""

    __slots__ = ("acquire_timeout_s",)

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[asyncpg.Record]:
        return _Acquire(self, self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, application_name: str = "scns",
    acquire_timeout_s: float = ACQUIRE_TIMEOUT_S, statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> Pool:
    """A pool; `statement_timeout_s` 0 leaves statements unbounded (and the command timeout
    off with it)."""
    pool = Pool(
        dsn,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        # asyncpg.create_pool's defaults, which the Pool constructor does not have
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=functools.partial(_init, statement_timeout_s=statement_timeout_s),
        reset=_reset,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=statement_timeout_s + COMMAND_MARGIN_S if statement_timeout_s else None,
        server_settings=server_settings(application_name),
    )
    return await pool


async def connect(dsn: str, *, application_name: str = "scns",
                  command_timeout: float | None = None) -> asyncpg.Connection[Any]:
    """A dedicated connection (not pooled): the connect timeout, and `command_timeout` for
    each statement when given (None: as long as it takes)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, server_settings=server_settings(application_name), timeout=CONNECT_TIMEOUT_S,
        command_timeout=command_timeout,
    )
    await _init(conn)
    return conn
