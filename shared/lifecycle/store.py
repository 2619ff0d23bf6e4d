"""The guarded statements of the job lifecycle (queries.sql, `-- transition:`), one method each.

Only the lifecycle module uses this: a caller elsewhere would skip the Redis, dispatch and event
steps that belong to the same operation. Each method returns the rows its guard let through; an
empty answer means "not in a state this operation applies to" (someone else got there first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.arrays import JobRef
from shared.db.jobs import Executor, Job, JobSpec, Usage, spec_digest
from shared.db.queries import q
from shared.dependencies import Dependency
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
class Target:
    """What a dependency names: a job (or element), or a whole array (job_id = its id)."""

    job_id: int | None  # None for singleton
    is_array: bool
    array_id: int | None  # the array the job belongs to (or the array itself)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """A finished attempt: the job as it is now, and how the attempt ended."""

    job: Job
    attempt: int
    state: JobState  # the attempt's end (a NODE_FAIL while being cancelled reads CANCELLED)

    @property
    def again(self) -> bool:
        return self.job.attempt != self.attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """The end of one attempt, as its worker reports it (TransitionStore.finish_many)."""

    job: Job
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    again_after_s: float | None = None
    retry: bool = False

    @property
    def key(self) -> tuple[int, int, str | None]:
        return (self.job.id, self.job.attempt, self.job.worker_id)


class TransitionStore:
    def __init__(self, db: Executor) -> None:
        self.db = db

    @staticmethod
    def _insert_args(spec: JobSpec, idempotency_key: str | None) -> list[Any]:
        reason = PendingReason.HELD if spec.hold else (
            PendingReason.DEPENDENCY if spec.dependency else PendingReason.PRIORITY)
        digest = spec_digest(spec) if idempotency_key is not None else None
        return [spec.name, spec.user, spec.script, spec.cpus, spec.memory_mb,
                spec.time_limit_s, dict(spec.env), spec.submit_dir, spec.partition,
                spec.requeue, spec.priority, spec.dependency, str(reason), idempotency_key,
                digest, spec.begin_at, spec.retries, spec.retry_delay_s, spec.workdir,
                spec.stdout_path, spec.stderr_path, spec.schedule_id]

    async def insert(self, spec: JobSpec, *, idempotency_key: str | None) -> Job | None:
        """None when the user already sent this idempotency key."""
        row = await self.db.fetchrow(q("insert_job"), *self._insert_args(spec, idempotency_key))
        return Job.from_row(row) if row else None

    async def insert_many(self, specs: Sequence[JobSpec]) -> list[Job]:
        """Jobs without an idempotency key, one statement for all; the i-th job is the i-th
        spec's (ids are taken in the order the statement inserts, which it fixes)."""
        if not specs:
            return []
        columns = list(zip(*(self._insert_args(s, None) for s in specs), strict=True))
        del columns[13:15]  # no idempotency key, no digest
        rows = await self.db.fetch(q("insert_jobs"), *columns)
        return [Job.from_row(r) for r in sorted(rows, key=lambda r: r["id"])]

    async def insert_array(self, spec: JobSpec, *, idempotency_key: str | None) -> Job:
        """Every element in one statement; returns the first (whose id is the array's). A
        repeated idempotency key raises asyncpg.UniqueViolationError (nothing is inserted)."""
        a = spec.array
        if a is None:
            raise ValueError("not an array")
        array_id = await self.db.fetchval(q("insert_array"),
                                          *self._insert_args(spec, idempotency_key),
                                          a.spec, a.throttle, list(a.tasks), a.step)
        row = await self.db.fetchrow(q("get_job"), array_id, None)
        if row is None:
            raise ConductorError("array insert returned no row")
        return Job.from_row(row)

    async def insert_dependency(self, *, dependent_id: int, is_array: bool, dep: Dependency,
                                user: str, name: str, targets: Sequence[Target]) -> None:
        await self.db.execute(
            q("insert_dependency"), dependent_id, is_array, dep.expr, dep.any_of, user, name,
            [str(e.kind) for e in dep.edges], [t.job_id for t in targets],
            [t.is_array for t in targets], [t.array_id for t in targets])

    async def resolve_refs(self, refs: Sequence[JobRef], user: str) -> list[Target | None]:
        """The job each reference names (None: no such job or element of `user`'s)."""
        rows = await self.db.fetch(q("resolve_refs"), [r.id for r in refs],
                                   [r.index for r in refs], user)
        out: list[Target | None] = []
        for r, ref in zip(rows, refs, strict=True):
            if r["is_array"]:
                out.append(Target(job_id=ref.id, is_array=True, array_id=ref.id))
            elif r["job_id"] is None:
                out.append(None)
            else:
                out.append(Target(job_id=r["job_id"], is_array=False, array_id=r["array_id"]))
        return out

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
        return (await self.start_many([(job_id, attempt, worker_id)]))[0]

    async def start_many(self, items: Sequence[tuple[int, int, str]]) -> list[Job | None]:
        """Each (job, attempt, worker) started, or None where its guard failed. An item given
        twice is answered once (the second reads None: it did not win the start)."""
        if not items:
            return []
        unique = sorted(set(items))  # rows locked in id order, as every batch statement does
        rows = await self.db.fetch(q("start_jobs"), [i[0] for i in unique],
                                   [i[1] for i in unique], [i[2] for i in unique])
        won = {(r["id"], r["attempt"], r["worker_id"]): Job.from_row(r) for r in rows}
        return [won.pop(i, None) for i in items]

    async def finish(self, job: Job, state: JobState, *, exit_code: int | None,
                     signal: int | None, reason: str | None, usage: Usage,
                     again_after_s: float | None, retry: bool) -> Ended | None:
        return (await self.finish_many([Finish(
            job=job, state=state, exit_code=exit_code, signal=signal, reason=reason, usage=usage,
            again_after_s=again_after_s, retry=retry)]))[0]

    async def finish_many(self, items: Sequence[Finish]) -> list[Ended | None]:
        """Each attempt's end recorded, or None where it was no longer its worker's to end. An
        attempt given twice is answered once."""
        if not items:
            return []
        first: dict[tuple[int, int, str | None], Finish] = {}
        for f in items:
            first.setdefault(f.key, f)
        unique = sorted(first.values(), key=lambda f: f.key)
        rows = await self.db.fetch(
            q("finish_jobs"), [f.job.id for f in unique], [f.job.attempt for f in unique],
            [f.job.worker_id for f in unique], [str(f.state) for f in unique],
            [f.exit_code for f in unique], [f.signal for f in unique],
            [f.reason for f in unique], [f.again_after_s for f in unique],
            [f.retry for f in unique], [f.usage.peak_rss_kb for f in unique],
            [f.usage.cpu_user_s for f in unique], [f.usage.cpu_system_s for f in unique])
        by_id = {r["id"]: r for r in rows}
        out: list[Ended | None] = []
        for f in items:
            row = by_id.pop(f.job.id, None)
            out.append(None if row is None else Ended(
                job=Job.from_row(row), attempt=f.job.attempt,
                state=JobState(row["attempt_state"])))
        return out

    async def cancel_array(self, array_id: int, reason: str
                           ) -> tuple[int, list[tuple[int, int, str]]]:
        """(elements cancelled, the ALLOCATED ones as (job, attempt, worker))."""
        row = await self.db.fetchrow(q("cancel_array_unstarted"), array_id, reason)
        if row is None:
            raise ConductorError("cancel_array_unstarted returned no row")
        return int(row["n"]), list(zip(row["ids"], row["attempts"], row["workers"],
                                       strict=True))

    async def stop_array(self, array_id: int) -> list[Job]:
        return [Job.from_row(r) for r in await self.db.fetch(q("request_stop_array"), array_id)]

    async def hold_array(self, array_id: int) -> int:
        return int(await self.db.fetchval(q("hold_array"), array_id))

    async def release_array(self, array_id: int) -> int:
        return int(await self.db.fetchval(q("release_array"), array_id))

    async def throttled_arrays(self) -> list[tuple[int, int]]:
        """(array, room under its throttle) for arrays with elements waiting for it."""
        return [(r["id"], r["room"]) for r in await self.db.fetch(q("throttled_arrays"))]

    async def promote_array_tasks(self, room: Sequence[tuple[int, int]]) -> int:
        if not room:
            return 0
        rows = await self.db.fetch(q("promote_array_tasks"), [a for a, _ in room],
                                   [n for _, n in room])
        return len(rows)

    async def lock_dependencies(self) -> None:
        """Within a transaction: one resolver of dependencies at a time."""
        await self.db.execute(q("lock_dependencies"))

    async def evaluate_edges(self, *, ended: Sequence[int], arrays: Sequence[int],
                             fresh: Sequence[int], sweep: bool) -> list[int]:
        """The dependents some edge of which was just decided."""
        rows = await self.db.fetch(q("evaluate_edges"), list(ended), list(arrays), list(fresh),
                                   sweep)
        return [r["dependent_id"] for r in rows]

    async def settle_dependencies(self, dependents: Sequence[int]
                                  ) -> list[tuple[int, bool, str]]:
        """(dependent, is an array, met|never) for each dependency now settled."""
        rows = await self.db.fetch(q("settle_dependencies"), list(dependents))
        return [(r["dependent_id"], r["is_array"], r["state"]) for r in rows]

    async def dependency_met(self, jobs: Sequence[int], arrays: Sequence[int]) -> int:
        return len(await self.db.fetch(q("dependency_met"), list(jobs), list(arrays)))

    async def dependency_never(self, jobs: Sequence[int], arrays: Sequence[int]
                               ) -> list[tuple[int, int, int | None]]:
        """(job, attempt, array) of each job cancelled."""
        rows = await self.db.fetch(q("dependency_never"), list(jobs), list(arrays))
        return [(r["id"], r["attempt"], r["array_job_id"]) for r in rows]

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
