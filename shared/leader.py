"""One active replica at a time: a PostgreSQL advisory lock held on a dedicated connection.

When the holder dies its connection closes and PostgreSQL frees the lock at once (no TTL to wait
out). Leadership is an efficiency measure, not the safety net: every placement is also a guarded
UPDATE (`state = 'PENDING' AND attempt = $n`) and an idempotent Lua allocation, so even two
schedulers acting at once cannot place one attempt twice (tests/e2e run them so), and every
reconciler repair is a guarded update or an idempotent script.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from shared.db import UNAVAILABLE
from shared.db.pool import connect

log = logging.getLogger(__name__)

SCHEDULER_LOCK_ID = 0x5C45_5C4E
RECONCILER_LOCK_ID = 0x5C45_2EC0
# the lock's statements never wait (pg_try_advisory_lock, SELECT 1): one that takes this long
# means PostgreSQL or the network stopped answering, and leadership is given up
COMMAND_TIMEOUT_S = 10.0
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNAVAILABLE)


class Leadership:
    def __init__(self, dsn: str, *, lock_id: int, name: str, exclusive: bool = True) -> None:
        self.dsn = dsn
        self.lock_id = lock_id
        self.name = name
        self.exclusive = exclusive
        self._conn: asyncpg.Connection[Any] | None = None
        self.held = not exclusive

    async def check(self) -> bool:
        """Acquire or confirm leadership; never raises for a lost database (returns False)."""
        if not self.exclusive:
            return True
        try:
            if self._conn is None or self._conn.is_closed():
                self.held = False
                self._conn = await connect(self.dsn, application_name=f"scns-{self.name}-leader",
                                           command_timeout=COMMAND_TIMEOUT_S)
            if self.held:
                await self._conn.fetchval("SELECT 1")
                return True
            self.held = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                                       self.lock_id))
            if self.held:
                log.info("became the active %s", self.name, extra={"event": "leader-acquired"})
            return self.held
        except UNAVAILABLE as e:
            if self.held:
                log.warning("lost leadership: %s", e, extra={"event": "leader-lost"})
            self.held = False
            await self.close()
            return False

    async def __aenter__(self) -> Leadership:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.close(timeout=2)
            except _CLOSE_ERRORS:
                self._conn.terminate()
        self._conn = None
