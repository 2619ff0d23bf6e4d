"""The reconciler's view of PostgreSQL, and its guarded repairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from shared.db.jobs import Job
from shared.db.queries import q
from shared.states import JobState

Executor: TypeAlias = "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[Any]"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreleased:
    job_id: int
    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int
    age_s: float
    state: str
    job_attempt: int

    @property
    def current(self) -> bool:
        """The row belongs to the job's current attempt, which holds (or will hold) capacity."""
        return JobState(self.state).active and self.attempt == self.job_attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class Active:
    job: Job
    age_s: float


class RepairStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def unreleased(self) -> list[Unreleased]:
        rows = await self.db.fetch(q("unreleased_attempts"))
        return [Unreleased(**dict(r)) for r in rows]

    async def release_orphan(self, job_id: int, attempt: int) -> bool:
        return bool(await self.db.fetch(q("release_orphan_attempt"), job_id, attempt))

    async def active(self) -> list[Active]:
        return [Active(job=Job.from_row(r), age_s=r["age_s"])
                for r in await self.db.fetch(q("active_jobs"))]

    async def lost_workers(self, grace_s: float) -> dict[str, int | None]:
        """Workers down for longer than `grace_s`, each with the departure it is down by
        (its `left_mark`; None when recorded lost without a registry record)."""
        return {r["id"]: r["left_mark"] for r in await self.db.fetch(q("lost_workers"),
                                                                     grace_s)}

    async def drained_workers(self) -> set[str]:
        return {r["id"] for r in await self.db.fetch(q("worker_drain_flags"))}
