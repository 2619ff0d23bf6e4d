"""Capacity accounting in Redis: the atomic allocate / release pair and the views of it.

The scripts (allocate.lua, release.lua) are the only writers of the allocated counters and the
per-job allocation records, and each keeps the invariant *a worker's counter equals the sum of
the records on it, the cluster's counter equals the sum of all records, and no counter exceeds
its worker's capacity*. Both are safe to run twice (redis-py retries on timeouts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.keys import Keys
from shared.lua import Scripts
from shared.redis import aw

# jobs per allocate.lua call: one call holds Redis for its duration (~2 ms per 250 jobs)
BATCH = 250


class Outcome(Enum):
    PLACED = "placed"  # allocated now, or already allocated to this attempt
    NO_ROOM = "no-room"  # no candidate is ready with enough free capacity
    HELD = "held"  # an allocation of another attempt of this job is still held
    NOT_READY = "not-ready"  # the records are being rebuilt after a Redis restart


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    outcome: Outcome
    worker_id: str | None = None
    held_attempt: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationRecord:
    job_id: int
    worker_id: str
    cpus: int
    memory_mb: int
    attempt: int

    @classmethod
    def parse(cls, job_id: str, value: str) -> AllocationRecord:
        worker, cpus, mem, attempt = value.split("|")
        return cls(job_id=int(job_id), worker_id=worker, cpus=int(cpus), memory_mb=int(mem),
                   attempt=int(attempt))


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    cpus: int
    memory_mb: int


def _placement(reply: list[Any]) -> Placement:
    code = int(reply[0])
    if code == 1:
        return Placement(outcome=Outcome.PLACED, worker_id=reply[1])
    if code == 0:
        return Placement(outcome=Outcome.NO_ROOM)
    if code == -2:
        return Placement(outcome=Outcome.NOT_READY)
    return Placement(outcome=Outcome.HELD, worker_id=reply[1], held_attempt=int(reply[2]))


class Allocator:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts or Scripts(redis)

    async def allocate(
        self, *, job_id: int, attempt: int, cpus: int, memory_mb: int,
        candidates: Sequence[str],
    ) -> Placement:
        """Place the job on the first candidate that is ready and has room."""
        if cpus < 1 or memory_mb < 0 or attempt < 1:
            raise ValueError("cpus >= 1, memory_mb >= 0 and attempt >= 1 are required")
        keys, args = self._batch([(job_id, attempt, cpus, memory_mb, candidates)])
        return _placement((await self.scripts.run("allocate", keys, args))[0])

    async def allocate_many(self, items: Sequence[tuple[int, int, int, int, str]]
                            ) -> list[Placement]:
        """`allocate` of (job, attempt, cpus, memory_mb, worker) each on one worker, in order:
        a script call per BATCH jobs (each names its workers once), pipelined."""
        if not items:
            return []
        script = self.scripts.script("allocate")
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(items), BATCH):
                keys, args = self._batch([(j, a, c, m, (w,))
                                          for j, a, c, m, w in items[i:i + BATCH]])
                await script(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        seen: dict[tuple[Any, ...], Placement] = {}  # a page's answers repeat: parse each once
        out = []
        for chunk in replies:
            for r in chunk:
                key = tuple(r)
                got = seen.get(key)
                if got is None:
                    got = seen[key] = _placement(r)
                out.append(got)
        return out

    def _batch(self, jobs: Sequence[tuple[int, int, int, int, Sequence[str]]]
               ) -> tuple[list[str], list[Any]]:
        """allocate.lua's keys and arguments for these (job, attempt, cpus, memory_mb,
        candidates): each worker named once, the jobs in one string."""
        k = self.keys
        at: dict[str, int] = {}  # worker -> its position (1-based) in the script's list
        lines: list[str] = []
        for job_id, attempt, cpus, mem, candidates in jobs:
            where = " ".join([str(at.setdefault(w, len(at) + 1)) for w in candidates])
            lines.append(f"{int(job_id)} {int(attempt)} {int(cpus)} {int(mem)} {where}")
        keys = [k.allocations, k.allocated_cpus, k.allocated_memory_mb, k.alloc_epoch]
        for w in at:
            keys += [k.member(w), k.worker_lease(w), k.worker_alloc(w)]
        return keys, [len(at), *at, ";".join(lines)]

    async def release(self, *, job_id: int, attempt: int, worker_id: str) -> int:
        """1 released, 0 nothing held (a repeat), -1 another attempt holds it, -2 held on
        another worker."""
        k = self.keys
        result: int = await self.scripts.run(
            "release",
            [k.allocations, k.allocated_cpus, k.allocated_memory_mb, k.worker_alloc(worker_id)],
            [job_id, attempt, worker_id],
        )
        return result

    async def release_in(self, pipe: Pipeline, *, job_id: int, attempt: int,
                         worker_id: str) -> None:
        """Queue a `release` on a pipeline the caller executes."""
        k = self.keys
        await self.scripts.script("release")(
            keys=[k.allocations, k.allocated_cpus, k.allocated_memory_mb,
                  k.worker_alloc(worker_id)],
            args=[job_id, attempt, worker_id], client=pipe)

    async def ready(self) -> bool:
        return bool(await aw(self.redis.exists(self.keys.alloc_epoch)))

    async def restore(self, records: Sequence[AllocationRecord], *, epoch: str) -> int:
        """Rebuild records while the epoch is missing, then open it (-1: it was open)."""
        k = self.keys
        args: list[Any] = [epoch]
        keys = [k.allocations, k.allocated_cpus, k.allocated_memory_mb, k.alloc_epoch]
        for r in records:
            keys.append(k.worker_alloc(r.worker_id))
            args += [r.job_id, r.worker_id, r.cpus, r.memory_mb, r.attempt]
        restored: int = await self.scripts.run("restore", keys, args)
        return restored

    async def record_running(self, r: AllocationRecord) -> bool:
        """Record a RUNNING job's allocation whatever the free capacity (it is consumed)."""
        k = self.keys
        done: int = await self.scripts.run(
            "record",
            [k.allocations, k.allocated_cpus, k.allocated_memory_mb, k.worker_alloc(r.worker_id)],
            [r.job_id, r.worker_id, r.cpus, r.memory_mb, r.attempt])
        return done == 1

    async def recount(self, worker_ids: Sequence[str]) -> int:
        """Counters := sums of the records, atomically; returns how many were corrected."""
        k = self.keys
        fixed: int = await self.scripts.run(
            "recount",
            [k.allocations, k.allocated_cpus, k.allocated_memory_mb,
             *(k.worker_alloc(w) for w in worker_ids)], list(worker_ids))
        return fixed

    async def records(self) -> dict[int, AllocationRecord]:
        raw: dict[str, str] = await aw(self.redis.hgetall(self.keys.allocations))
        return {int(j): AllocationRecord.parse(j, v) for j, v in raw.items()}

    async def record(self, job_id: int) -> AllocationRecord | None:
        value = await aw(self.redis.hget(self.keys.allocations, str(job_id)))
        return AllocationRecord.parse(str(job_id), value) if value else None

    async def usage(self, worker_ids: Sequence[str]) -> dict[str, Usage]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in worker_ids:
                pipe.hmget(self.keys.worker_alloc(wid), ["cpus", "memory_mb"])
            replies = await pipe.execute()
        return {
            wid: Usage(cpus=int(c or 0), memory_mb=int(m or 0))
            for wid, (c, m) in zip(worker_ids, replies, strict=True)
        }

    async def cluster_usage(self) -> Usage:
        cpus, mem = await self.redis.mget(self.keys.allocated_cpus, self.keys.allocated_memory_mb)
        return Usage(cpus=int(cpus or 0), memory_mb=int(mem or 0))
