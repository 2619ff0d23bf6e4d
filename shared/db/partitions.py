"""Partitions, per-user limits and fair-share usage in PostgreSQL.

The tables are small (a row per partition, per limited user, per user with usage); the
scheduler reads them every pass, so a change takes effect at the next pass without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from shared.db.jobs import Executor
from shared.db.queries import q
from shared.partitions import Partition


def partition_from_row(r: asyncpg.Record) -> Partition:
    users = r["allowed_users"]
    return Partition(name=r["name"], selector=dict(r["selector"]),
                     default_time_limit=r["default_time_limit"],
                     max_time_limit=r["max_time_limit"], max_cpus_per_job=r["max_cpus_per_job"],
                     tier=r["tier"], allowed_users=tuple(users) if users is not None else None,
                     default=r["is_default"], created_at=r["created_at"],
                     updated_at=r["updated_at"],
                     max_running_cpus_per_user=r["max_running_cpus_per_user"],
                     max_pending_jobs_per_user=r["max_pending_jobs_per_user"])


def _args(p: Partition) -> list[Any]:
    return [p.name, dict(p.selector), p.default_time_limit, p.max_time_limit,
            p.max_cpus_per_job, p.tier,
            list(p.allowed_users) if p.allowed_users is not None else None, p.default,
            p.max_running_cpus_per_user, p.max_pending_jobs_per_user]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    user: str
    max_running_cpus: int | None = None
    max_pending_jobs: int | None = None
    shares: int = 1
    running_cpus: int = 0
    pending_jobs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UserUsage:
    """A user's fair-share inputs as of now."""

    user: str
    past_cpu_s: float  # finished attempts, decayed
    running_cpu_s: float  # what their running jobs have used so far
    running_cpus: int
    shares: int
    updated_at: datetime | None

    @property
    def cpu_s(self) -> float:
        return self.past_cpu_s + self.running_cpu_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """A pending job at the head of its (user, partition list) group."""

    id: int
    attempt: int
    cpus: int
    memory_mb: int
    priority: int
    reason: str | None
    user: str
    partition: str
    time_limit_s: int | None
    waited_s: float


class _Taken(Exception):
    pass


class PartitionStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def all(self) -> dict[str, Partition]:
        return {r["name"]: partition_from_row(r) for r in await self.db.fetch(q("partition_list"))}

    async def get(self, name: str) -> Partition | None:
        row = await self.db.fetchrow(q("partition_get"), name)
        return partition_from_row(row) if row else None

    async def create(self, p: Partition, pool: asyncpg.Pool[Any]) -> Partition | None:
        """None if the name is taken. Becoming the default takes it from the previous one."""
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if p.default:  # first: at most one default at any moment
                        await conn.execute(q("partition_clear_default"), p.name)
                    row = await conn.fetchrow(q("partition_insert"), *_args(p))
                    if row is None:
                        raise _Taken
            except _Taken:
                return None  # the name is taken: nothing changed (rolled back)
        return partition_from_row(row)

    async def update(self, name: str, changes: Mapping[str, Any], pool: asyncpg.Pool[Any]
                     ) -> Partition | None:
        """Merge `changes` (Partition field -> value) into the row, atomically."""
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("partition_lock"), name)
            if row is None:
                return None
            merged = replace(partition_from_row(row), **changes)
            if "default" in changes and merged.default:
                await conn.execute(q("partition_clear_default"), name)
            row = await conn.fetchrow(q("partition_update"), *_args(merged))
        return partition_from_row(row) if row else None

    async def pending_of(self, user: str, name: str) -> int:
        """`user`'s pending jobs that name partition `name`."""
        n: int = await self.db.fetchval(q("partition_pending_of"), user, name)
        return n

    async def in_use(self, name: str) -> int:
        n: int = await self.db.fetchval(q("partition_jobs"), name)
        return n

    async def delete(self, name: str) -> bool:
        return await self.db.fetchval(q("partition_delete"), name) is not None


class LimitStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def get(self, user: str) -> Limits:
        r = await self.db.fetchrow(q("limits_get"), user)
        assert r is not None  # one row for any name
        return Limits(user=user, max_running_cpus=r["max_running_cpus"],
                      max_pending_jobs=r["max_pending_jobs"], shares=r["shares"],
                      running_cpus=r["running_cpus"], pending_jobs=r["pending_jobs"])

    async def put(self, user: str, *, max_running_cpus: int | None,
                  max_pending_jobs: int | None, shares: int) -> None:
        await self.db.execute(q("limits_put"), user, max_running_cpus, max_pending_jobs, shares)

    async def pending_limits(self) -> dict[str, int]:
        """user -> max_pending_jobs, for the users with such a limit."""
        return {r["user_name"]: r["max_pending_jobs"]
                for r in await self.db.fetch(q("limits_pending_all"))}

    async def pending_room(self, user: str) -> int | None:
        """How many more jobs `user` may have pending (None: no limit)."""
        room: int | None = await self.db.fetchval(q("limits_pending_room"), user)
        return room

    async def held(self, users: Sequence[str]) -> list[tuple[str, str, str, int]]:
        """(user, partition list, worker, CPUs) of every active job of these users."""
        rows = await self.db.fetch(q("active_of_users"), list(users))
        return [(r["user_name"], r["partition"], r["worker_id"], r["cpus"]) for r in rows]

    async def cpu_limits(self) -> dict[str, tuple[int, int]]:
        """user -> (max running CPUs, CPUs held now), for the users with such a limit."""
        rows = await self.db.fetch(q("limits_cpu"))
        return {r["user_name"]: (r["max_running_cpus"], r["running_cpus"]) for r in rows}


class ShareStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def rollup(self, half_life_s: float) -> None:
        """Add the attempts that finished since the last roll-up to their users' usage."""
        await self.db.execute(q("fairshare_rollup"), half_life_s)

    async def usage(self, half_life_s: float) -> list[UserUsage]:
        rows = await self.db.fetch(q("fairshare_usage"), half_life_s)
        return [UserUsage(user=r["user_name"], past_cpu_s=r["past_cpu_s"],
                          running_cpu_s=r["running_cpu_s"], running_cpus=r["running_cpus"],
                          shares=r["shares"], updated_at=r["updated_at"]) for r in rows]


class QueueStore:
    """The scheduler's queue, read group by group."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def groups(self) -> list[tuple[str, str]]:
        return [(r["user_name"], r["partition"]) for r in await self.db.fetch(q("queue_groups"))]

    async def heads(self, cursors: Sequence[tuple[str, str, int, int]], limit: int
                    ) -> list[Head]:
        """The next `limit` jobs of each (user, partition, after priority, after id) group."""
        if not cursors:
            return []
        users, parts, prios, lasts = (list(x) for x in zip(*cursors, strict=True))
        rows = await self.db.fetch(q("queue_heads"), users, parts, prios, lasts, limit)
        return [Head(id=r["id"], attempt=r["attempt"], cpus=r["cpus"], memory_mb=r["memory_mb"],
                     priority=r["priority"], reason=r["reason"], user=r["user_name"],
                     partition=r["partition"], time_limit_s=r["time_limit_s"],
                     waited_s=r["waited_s"]) for r in rows]
