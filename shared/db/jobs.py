"""Jobs in PostgreSQL: every state change is a guarded UPDATE derived from the state machine."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson

from shared.db.queries import q
from shared.errors import ConductorError, IdempotencyConflict
from shared.states import REQUEUE_FROM, TERMINAL, JobState, sources_for

Executor: TypeAlias = "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[Any]"

_TERMINAL_NAMES = sorted(str(s) for s in TERMINAL)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What a user asks for; validated by the gateway before it gets here."""

    script: str
    cpus: int = 1
    name: str = "job"
    user: str = "anonymous"
    memory_mb: int | None = None
    time_limit_s: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    submit_dir: str | None = None
    partition: str | None = None
    requeue: bool = False
    priority: int = 0
    dependency: str | None = None
    hold: bool = False


def spec_digest(spec: JobSpec) -> str:
    """A stable fingerprint of a request, to tell a retry from a reused key."""
    fields = dataclasses.asdict(spec) | {"env": dict(spec.env)}
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: int
    name: str
    user: str
    state: JobState
    reason: str | None
    priority: int
    script: str
    cpus: int
    memory_mb: int | None
    time_limit_s: int | None
    env: Mapping[str, str]
    submit_dir: str | None
    partition: str | None
    requeue: bool
    dependency: str | None
    attempt: int
    worker_id: str | None
    exit_code: int | None
    signal: int | None
    cancel_requested: bool
    submitted_at: datetime
    allocated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Job:
        return cls(
            id=row["id"], name=row["name"], user=row["user_name"],
            state=JobState(row["state"]), reason=row["reason"], priority=row["priority"],
            script=row["script"], cpus=row["cpus"], memory_mb=row["memory_mb"],
            time_limit_s=row["time_limit_s"], env=row["env"], submit_dir=row["submit_dir"],
            partition=row["partition"], requeue=row["requeue"], dependency=row["dependency"],
            attempt=row["attempt"], worker_id=row["worker_id"], exit_code=row["exit_code"],
            signal=row["signal"], cancel_requested=row["cancel_requested"],
            submitted_at=row["submitted_at"], allocated_at=row["allocated_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
        )


class JobStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def insert(self, spec: JobSpec) -> Job:
        job, _ = await self.insert_once(spec, idempotency_key=None)
        return job

    async def insert_once(self, spec: JobSpec, *,
                          idempotency_key: str | None) -> tuple[Job, bool]:
        """Insert the job, or with a key the user already sent, return the job that key made
        (`created` False). The same key with a different request is an IdempotencyConflict."""
        reason = "Held" if spec.hold else ("Dependency" if spec.dependency else "Priority")
        digest = spec_digest(spec) if idempotency_key is not None else None
        row = await self.db.fetchrow(
            q("insert_job"), spec.name, spec.user, spec.script, spec.cpus, spec.memory_mb,
            spec.time_limit_s, dict(spec.env), spec.submit_dir, spec.partition, spec.requeue,
            spec.priority, spec.dependency, reason, idempotency_key, digest,
        )
        if row is not None:
            return Job.from_row(row), True
        if idempotency_key is None:
            raise ConductorError("INSERT ... RETURNING returned no row")
        row = await self.db.fetchrow(q("get_job_by_key"), spec.user, idempotency_key)
        if row is None:  # cannot happen: the conflicting row is committed before DO NOTHING
            raise ConductorError(f"key {idempotency_key!r} conflicted but no job has it")
        if row["request_digest"] != digest:
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency_key!r} was already used for a different request "
                f"(job {row['id']}); use a new key for a new job")
        return Job.from_row(row), False

    async def get(self, job_id: int) -> Job | None:
        row = await self.db.fetchrow(q("get_job"), job_id)
        return Job.from_row(row) if row else None

    async def transition(
        self,
        job_id: int,
        *,
        attempt: int,
        to: JobState,
        reason: str | None = None,
        worker_id: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
    ) -> Job | None:
        """Move the job to `to` if the state machine allows it from its current state and it is
        still at `attempt`. Returns the updated job, or None when the guard did not match (some
        other actor got there first, or the attempt is stale): callers treat None as "not mine"."""
        sources = sorted(str(s) for s in sources_for(to))
        row = await self.db.fetchrow(
            q("transition_job"), job_id, attempt, str(to), reason, worker_id, exit_code,
            signal, sources, _TERMINAL_NAMES,
        )
        return Job.from_row(row) if row else None

    async def requeue(self, job_id: int, *, attempt: int, reason: str = "Priority") -> Job | None:
        """Start a new attempt (PENDING, attempt + 1) if the job is still at `attempt`."""
        row = await self.db.fetchrow(
            q("requeue_job"), job_id, attempt, reason, sorted(str(s) for s in REQUEUE_FROM)
        )
        return Job.from_row(row) if row else None


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingJob:
    id: int
    attempt: int
    cpus: int
    memory_mb: int
    priority: int
    reason: str | None
    waited_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocated:
    job_id: int
    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int


MAX_PRIORITY = 2**31 - 1


class QueueStore:
    """The scheduler's and executor's batch operations on jobs."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def pending(self, *, limit: int, after: tuple[int, int] | None = None
                      ) -> list[PendingJob]:
        """One page of placeable pending jobs, priority first, then oldest first."""
        prio, last_id = after if after else (MAX_PRIORITY + 1, 0)
        rows = await self.db.fetch(q("pending_jobs"), limit, prio, last_id)
        return [PendingJob(id=r["id"], attempt=r["attempt"], cpus=r["cpus"],
                           memory_mb=r["memory_mb"], priority=r["priority"], reason=r["reason"],
                           waited_s=r["waited_s"]) for r in rows]

    async def allocate(self, plan: Sequence[tuple[int, int, str]]) -> list[Allocated]:
        """Record placements (job, attempt, worker); returns those this call won."""
        if not plan:
            return []
        rows = await self.db.fetch(q("allocate_jobs"), [p[0] for p in plan],
                                   [p[1] for p in plan], [p[2] for p in plan])
        return [Allocated(job_id=r["id"], attempt=r["attempt"], worker_id=r["worker_id"],
                          cpus=r["cpus"], memory_mb=r["memory_mb"]) for r in rows]

    async def unallocate(self, jobs: Sequence[tuple[int, int]], reason: str) -> int:
        if not jobs:
            return 0
        rows = await self.db.fetch(q("unallocate_jobs"), [j for j, _ in jobs],
                                   [a for _, a in jobs], reason)
        return len(rows)

    async def set_reasons(self, reasons: Mapping[int, str]) -> None:
        if reasons:
            items = sorted(reasons.items())
            await self.db.execute(q("set_pending_reasons"), [j for j, _ in items],
                                  [r for _, r in items])

    async def start(self, job_id: int, attempt: int, worker_id: str) -> Job | None:
        row = await self.db.fetchrow(q("start_job"), job_id, attempt, worker_id)
        return Job.from_row(row) if row else None

    async def on_worker(self, worker_id: str, states: Sequence[JobState]) -> list[Job]:
        rows = await self.db.fetch(q("jobs_on_worker"), worker_id, [str(s) for s in states])
        return [Job.from_row(r) for r in rows]

    async def page(self, *, states: Sequence[str] | None, user: str | None, name: str | None,
                   before_id: int | None, limit: int) -> list[Job]:
        rows = await self.db.fetch(q("list_jobs"), list(states) if states else None, user, name,
                                   before_id, limit)
        return [Job.from_row(r) for r in rows]

    async def stats(self) -> list[tuple[str, str, int, int]]:
        rows = await self.db.fetch(q("queue_stats"))
        return [(r["state"], r["reason"], r["n"], r["cpus"]) for r in rows]


async def finish(
    db: Executor, *, job_id: int, attempt: int, worker_id: str, state: JobState,
    exit_code: int | None, signal: int | None, reason: str | None = None,
) -> Job | None:
    """RUNNING -> terminal and the allocation row released (one statement)."""
    row = await db.fetchrow(q("finish_job"), job_id, attempt, worker_id, str(state), exit_code,
                            signal, reason)
    return Job.from_row(row) if row else None


async def hand_back(db: Executor, *, job_id: int, attempt: int, worker_id: str) -> Job | None:
    """ALLOCATED -> PENDING (same attempt: nothing ran) and the allocation row released."""
    row = await db.fetchrow(q("hand_back_job"), job_id, attempt, worker_id)
    return Job.from_row(row) if row else None


async def cancel_unstarted(db: Executor, job_id: int) -> Job | None:
    """PENDING/ALLOCATED -> CANCELLED at once, allocation row released. The returned job still
    names the worker an ALLOCATED job was placed on (its Redis allocation must be released)."""
    row = await db.fetchrow(q("cancel_unstarted"), job_id)
    return Job.from_row(row) if row else None


async def request_cancel(db: Executor, job_id: int) -> Job | None:
    row = await db.fetchrow(q("request_cancel"), job_id)
    return Job.from_row(row) if row else None
