"""The guarded statements of the job lifecycle (queries.sql, `-- transition:`), one method each.

Only the lifecycle module uses this: a caller elsewhere would skip the Redis, dispatch and event
steps that belong to the same operation. Each method returns the rows its guard let through; an
empty answer means "not in a state this operation applies to" (someone else got there first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db.jobs import Executor, Job, JobSpec, Usage, spec_digest
from shared.db.queries import q
from shared.errors import ConductorError
from shared.states import JobState, PendingReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocated:
    job_id: int
    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """scontrol update of a pending job: only the fields given (`set`) change."""

    priority: int | None = None
    time_limit_s: int | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    name: str | None = None
    begin_at: datetime | None = None
    set: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.set - {"priority", "time_limit_s", "cpus", "memory_mb", "name",
                              "begin_at"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """A finished attempt: the job as it is now, and how the attempt ended."""

    job: Job
    attempt: int
    state: JobState  # the attempt's end (a NODE_FAIL while being cancelled reads CANCELLED)

    @property
    def again(self) -> bool:
        return self.job.attempt != self.attempt


class TransitionStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def insert(self, spec: JobSpec, *, idempotency_key: str | None) -> Job | None:
        """None when the user already sent this idempotency key."""
        reason = PendingReason.HELD if spec.hold else (
            PendingReason.DEPENDENCY if spec.dependency else PendingReason.PRIORITY)
        digest = spec_digest(spec) if idempotency_key is not None else None
        row = await self.db.fetchrow(
            q("insert_job"), spec.name, spec.user, spec.script, spec.cpus, spec.memory_mb,
            spec.time_limit_s, dict(spec.env), spec.submit_dir, spec.partition, spec.requeue,
            spec.priority, spec.dependency, str(reason), idempotency_key, digest,
            spec.begin_at, spec.retries, spec.retry_delay_s)
        return Job.from_row(row) if row else None

    async def place(self, plan: Sequence[tuple[int, int, str]]) -> list[Allocated]:
        if not plan:
            return []
        rows = await self.db.fetch(q("allocate_jobs"), [p[0] for p in plan],
                                   [p[1] for p in plan], [p[2] for p in plan])
        return [Allocated(job_id=r["id"], attempt=r["attempt"], worker_id=r["worker_id"],
                          cpus=r["cpus"], memory_mb=r["memory_mb"]) for r in rows]

    async def hand_back(self, items: Sequence[tuple[int, int, str]], reason: str
                        ) -> list[tuple[Job, str]]:
        """(job, the worker it was on) for each placement this call gave back."""
        if not items:
            return []
        rows = await self.db.fetch(q("hand_back_jobs"), [i[0] for i in items],
                                   [i[1] for i in items], [i[2] for i in items], reason)
        return [(Job.from_row(r), r["from_worker"]) for r in rows]

    async def start(self, job_id: int, attempt: int, worker_id: str) -> Job | None:
        row = await self.db.fetchrow(q("start_job"), job_id, attempt, worker_id)
        return Job.from_row(row) if row else None

    async def finish(self, job: Job, state: JobState, *, exit_code: int | None,
                     signal: int | None, reason: str | None, usage: Usage,
                     again_after_s: float | None, retry: bool) -> Ended | None:
        row = await self.db.fetchrow(
            q("finish_job"), job.id, job.attempt, job.worker_id, str(state), exit_code, signal,
            reason, again_after_s, retry, usage.peak_rss_kb, usage.cpu_user_s,
            usage.cpu_system_s)
        if row is None:
            return None
        return Ended(job=Job.from_row(row), attempt=job.attempt,
                     state=JobState(row["attempt_state"]))

    async def cancel_unstarted(self, job_id: int, reason: str) -> Job | None:
        row = await self.db.fetchrow(q("cancel_unstarted"), job_id, reason)
        return Job.from_row(row) if row else None

    async def request_stop(self, job_id: int, *, cancel: bool) -> Job | None:
        row = await self.db.fetchrow(q("request_stop"), job_id, cancel)
        return Job.from_row(row) if row else None

    async def hold(self, job_id: int) -> Job | None:
        row = await self.db.fetchrow(q("hold_job"), job_id)
        return Job.from_row(row) if row else None

    async def release(self, job_id: int) -> Job | None:
        row = await self.db.fetchrow(q("release_job"), job_id)
        return Job.from_row(row) if row else None

    async def update(self, job_id: int, c: Changes) -> Job | None:
        args: list[Any] = [job_id]
        for name in ("priority", "time_limit_s", "cpus", "memory_mb", "name", "begin_at"):
            args += [name in c.set, getattr(c, name)]
        row = await self.db.fetchrow(q("update_job"), *args)
        return Job.from_row(row) if row else None

    async def requeue(self, job_id: int) -> Job | None:
        row = await self.db.fetchrow(q("requeue_job"), job_id)
        return Job.from_row(row) if row else None

    async def set_reasons(self, reasons: Mapping[int, str]) -> None:
        if reasons:
            items = sorted(reasons.items())
            await self.db.execute(q("set_pending_reasons"), [j for j, _ in items],
                                  [r for _, r in items])

    async def promote_due(self) -> tuple[int, float | None]:
        """(jobs whose begin time came, seconds until the next one's, if any)."""
        row = await self.db.fetchrow(q("promote_due"))
        if row is None:  # a SELECT of two scalar subqueries always answers one row
            raise ConductorError("promote_due returned no row")
        return int(row["promoted"]), row["next_in_s"]
