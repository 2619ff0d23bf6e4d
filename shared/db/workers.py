"""The durable record of workers in PostgreSQL, written by the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg

from shared.db.queries import q

Executor: TypeAlias = "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[Any]"


def from_ms(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRow:
    id: str
    incarnation: str
    hostname: str
    state: str
    drain: bool
    cpus: int
    memory_mb: int
    labels: Mapping[str, str]
    joined_at: datetime | None
    left_at: datetime | None
    left_reason: str | None
    last_heartbeat: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WorkerRow:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


class WorkerStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def joined(
        self, *, worker_id: str, incarnation: str, hostname: str, state: str, cpus: int,
        memory_mb: int, labels: Mapping[str, str],
    ) -> None:
        """Record an announced join (at PostgreSQL's now(); a repeat changes nothing)."""
        await self.db.execute(
            q("worker_joined"), worker_id, incarnation, hostname, state, cpus, memory_mb,
            dict(labels),
        )

    async def left(self, *, worker_id: str, incarnation: str, reason: str, mark: int) -> None:
        """Record an announced departure at PostgreSQL's now(); `mark` names it (the
        registry's record of it), so repeating it changes nothing."""
        await self.db.execute(q("worker_left"), worker_id, incarnation, mark, reason)

    async def set_drain(self, worker_id: str, drain: bool) -> WorkerRow | None:
        row = await self.db.fetchrow(q("worker_set_drain"), worker_id, drain)
        return WorkerRow.from_row(row) if row else None

    async def heartbeats(self, worker_ids: Sequence[str]) -> None:
        """These workers renewed their leases since the last call: last_heartbeat = now()."""
        if worker_ids:
            await self.db.execute(q("worker_heartbeats"), list(worker_ids))

    async def lost_unseen(self, worker_ids: Sequence[str], after_s: float) -> list[str]:
        """Record as down ('lost') those of `worker_ids` (workers Redis has no record of) that
        PostgreSQL still has up and that have not heartbeaten for `after_s`; their ids."""
        if not worker_ids:
            return []
        rows = await self.db.fetch(q("workers_lost_unseen"), list(worker_ids), after_s)
        return [str(r["id"]) for r in rows]

    async def list(self) -> list[WorkerRow]:
        return [WorkerRow.from_row(r) for r in await self.db.fetch(q("list_workers"))]

    async def get(self, worker_id: str) -> WorkerRow | None:
        row = await self.db.fetchrow(q("get_worker"), worker_id)
        return WorkerRow.from_row(row) if row else None
