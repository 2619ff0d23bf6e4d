"""Jobs in PostgreSQL: the models, and the reads every service makes.

Writes are not here: every change of a job is an operation of the lifecycle module
(shared/lifecycle), which runs the guarded statements of queries.sql.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool
import orjson

from shared.arrays import ArraySpec
from shared.db.queries import q
from shared.dependencies import Dependency
from shared.states import JobState

Executor: TypeAlias = ("asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[Any] | "
                       "asyncpg.pool.PoolConnectionProxy[Any]")


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
    begin_at: datetime | None = None
    retries: int = 0
    retry_delay_s: int = 0
    array: ArraySpec | None = None
    dependency_edges: Dependency | None = None
    workdir: str | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    nice: int = 0  # already subtracted from priority; kept for the policy check
    schedule_id: int | None = None  # the schedule that made it (shared/lifecycle/firing.py)


def spec_digest(spec: JobSpec) -> str:
    """A stable fingerprint of a request, to tell a retry from a reused key."""
    fields = dataclasses.asdict(spec) | {"env": dict(spec.env),
                                         "array": spec.array.spec if spec.array else None,
                                         "dependency_edges": None}
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What an attempt's processes consumed (None where it could not be measured)."""

    peak_rss_kb: int | None = None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None

    @property
    def cpu_s(self) -> float | None:
        if self.cpu_user_s is None and self.cpu_system_s is None:
            return None
        return (self.cpu_user_s or 0.0) + (self.cpu_system_s or 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayInfo:
    """The array an element belongs to (what SCNS_ARRAY_TASK_COUNT and friends say)."""

    id: int
    spec: str
    throttle: int | None
    task_count: int
    task_min: int
    task_max: int
    task_step: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job as PostgreSQL records it. A listing's jobs (`list_jobs`) are read without their
    script and environment: `script` is "" and `env` empty there (GET /jobs/{id} has them)."""

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
    begin_at: datetime | None = None
    retries: int = 0
    retry_delay_s: int = 0
    retries_used: int = 0
    requeue_requested: bool = False
    array_job_id: int | None = None
    array_task_id: int | None = None
    array: ArrayInfo | None = None  # where the query joined it (an element's array)
    workdir: str | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    usage: Usage | None = None  # the current attempt's, where the query joined it
    schedule_id: int | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Job:
        keys = frozenset(row.keys())  # an iterator: `in` on it would consume it
        usage = None
        if "peak_rss_kb" in keys:
            usage = Usage(peak_rss_kb=row["peak_rss_kb"], cpu_user_s=row["cpu_user_s"],
                          cpu_system_s=row["cpu_system_s"])
        script = row["script"] if "script" in keys else None
        env: Mapping[str, str] = row["env"] if "env" in keys else {}
        array = None
        meta = row["array_meta"] if "array_meta" in keys else None
        if meta is not None:  # an element: the script and environment are its array's
            script = meta.get("script", "") if script is None else script
            env = {**meta.get("env", {}), **env}
            array = ArrayInfo(id=meta["id"], spec=meta["spec"], throttle=meta["throttle"],
                              task_count=meta["task_count"], task_min=meta["task_min"],
                              task_max=meta["task_max"], task_step=meta["task_step"])
        return cls(
            id=row["id"], name=row["name"], user=row["user_name"],
            state=JobState(row["state"]), reason=row["reason"], priority=row["priority"],
            script=script or "", cpus=row["cpus"], memory_mb=row["memory_mb"],
            time_limit_s=row["time_limit_s"], env=env, submit_dir=row["submit_dir"],
            partition=row["partition"], requeue=row["requeue"], dependency=row["dependency"],
            attempt=row["attempt"], worker_id=row["worker_id"], exit_code=row["exit_code"],
            signal=row["signal"], cancel_requested=row["cancel_requested"],
            submitted_at=row["submitted_at"], allocated_at=row["allocated_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
            begin_at=row["begin_at"], retries=row["retries"],
            retry_delay_s=row["retry_delay_s"], retries_used=row["retries_used"],
            requeue_requested=row["requeue_requested"], array_job_id=row["array_job_id"],
            array_task_id=row["array_task_id"], array=array, workdir=row["workdir"],
            stdout_path=row["stdout_path"], stderr_path=row["stderr_path"], usage=usage,
            schedule_id=row["schedule_id"] if "schedule_id" in keys else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One placed attempt of a job, as sacct would show it."""

    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int
    allocated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    state: str | None
    reason: str | None
    exit_code: int | None
    signal: int | None
    usage: Usage

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Attempt:
        return cls(attempt=row["attempt"], worker_id=row["worker_id"], cpus=row["cpus"],
                   memory_mb=row["memory_mb"], allocated_at=row["allocated_at"],
                   started_at=row["started_at"], finished_at=row["finished_at"],
                   state=row["state"], reason=row["reason"], exit_code=row["exit_code"],
                   signal=row["signal"],
                   usage=Usage(peak_rss_kb=row["peak_rss_kb"], cpu_user_s=row["cpu_user_s"],
                               cpu_system_s=row["cpu_system_s"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class ArraySummary:
    id: int
    spec: str
    throttle: int | None
    count: int
    states: dict[str, int]


MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """Filters of a job listing (None matches everything)."""

    states: Sequence[str] | None = None
    user: str | None = None
    name: str | None = None
    before_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    array_job_id: int | None = None
    schedule_id: int | None = None
    limit: int = 100


class JobStore:
    """Reads of jobs (the gateway, the executor's own jobs; the scheduler's queue is QueueStore)."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def get(self, job_id: int, *, owner: str | None = None) -> Job | None:
        """The job; with `owner`, only if it is that user's (another's reads as None)."""
        row = await self.db.fetchrow(q("get_job"), job_id, owner)
        return Job.from_row(row) if row else None

    async def element(self, array_id: int, index: int, *, owner: str | None = None
                      ) -> Job | None:
        """Element `index` of array `array_id` (`12_3`), `owner`'s only when given."""
        row = await self.db.fetchrow(q("get_element"), array_id, index, owner)
        return Job.from_row(row) if row else None

    async def array_summary(self, array_id: int) -> ArraySummary | None:
        """An array's record and its elements' count per state (None: not an array)."""
        row = await self.db.fetchrow(q("array_summary"), array_id)
        if row is None:
            return None
        m = row["meta"]
        return ArraySummary(id=m["id"], spec=m["spec"], throttle=m["throttle"],
                            count=m["task_count"], states=dict(row["states"]))

    async def by_key(self, user: str, key: str) -> tuple[Job, str] | None:
        """The job an idempotency key made, with the digest of the request that made it."""
        row = await self.db.fetchrow(q("get_job_by_key"), user, key)
        return (Job.from_row(row), row["request_digest"]) if row else None

    async def on_worker(self, worker_id: str, states: Sequence[JobState]) -> list[Job]:
        rows = await self.db.fetch(q("jobs_on_worker"), worker_id, [str(s) for s in states])
        return [Job.from_row(r) for r in rows]

    async def page_rows(self, p: Page) -> list[asyncpg.Record]:
        """A page of the listing: each row a job as the API lists it (its names, its order;
        no script, no environment), for the gateway to send as it is."""
        rows: list[asyncpg.Record] = await self.db.fetch(
            q("list_jobs"), list(p.states) if p.states else None, p.user, p.name, p.before_id,
            p.limit, p.since, p.until, p.array_job_id, p.schedule_id)
        return rows

    async def attempts(self, job_id: int) -> list[Attempt]:
        return [Attempt.from_row(r) for r in await self.db.fetch(q("job_attempts"), job_id)]

    async def stats(self) -> list[tuple[str, str, int, int]]:
        rows = await self.db.fetch(q("queue_stats"))
        return [(r["state"], r["reason"], r["n"], r["cpus"]) for r in rows]
