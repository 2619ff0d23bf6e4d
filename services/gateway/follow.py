"""What every log follow asks PostgreSQL, asked once for all of them.

A follow whose job prints nothing checks, each poll, whether the attempt has ended (the output
is shipped before the end is recorded, so no more output and an ended attempt means done). A
thousand followers of a few jobs would ask PostgreSQL a thousand times a poll; here the answer
for a job is shared for a poll period, and concurrent askers wait for the one query in flight
(single flight), which reads two columns rather than the job's row (its script may be 1 MiB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from services.gateway.singleflight import SingleFlight
from shared.db.queries import q
from shared.states import JobState

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Progress:
    attempt: int
    state: JobState


class JobProgress:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], *, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._known: dict[int, tuple[float, Progress | None]] = {}
        self._asking: SingleFlight[int, Progress | None] = SingleFlight()
        self.queries = 0

    async def get(self, job_id: int) -> Progress | None:
        """The job's current attempt and state, at most `ttl_s` old (None: no such job)."""
        known = self._known.get(job_id)
        if known is not None and time.monotonic() - known[0] < self.ttl_s:
            return known[1]
        return await self._asking.do(job_id, lambda: self._ask(job_id))

    async def _ask(self, job_id: int) -> Progress | None:
        self.queries += 1
        row = await self.pool.fetchrow(q("job_progress"), job_id)
        progress = None if row is None else Progress(attempt=row["attempt"],
                                                     state=JobState(row["state"]))
        if len(self._known) >= MAX_ENTRIES:
            self._known.clear()
        self._known[job_id] = (time.monotonic(), progress)
        return progress

    async def ended(self, job_id: int, attempt: int) -> bool:
        """True when `attempt` of the job is no longer the current one or has ended."""
        p = await self.get(job_id)
        return p is None or p.attempt != attempt or p.state.terminal
