"""PostgreSQL access: the pool, the migration runner, named queries and domain stores."""

from __future__ import annotations

import asyncpg

from shared.db.pool import connect, create_pool

# PostgreSQL is away (down, restarting, failing over, unreachable): wait and retry. Any other
# PostgresError is a bug and is allowed to surface.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    # a pooled connection whose server went away mid-operation (asyncpg#1069): the pool
    # terminates it when its reset fails, so the next attempt gets a fresh connection
    asyncpg.exceptions.InternalClientError,
)

__all__ = ["UNAVAILABLE", "connect", "create_pool"]
