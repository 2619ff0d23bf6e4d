"""Cron schedules in PostgreSQL: the models, the job a schedule makes, and the owner-scoped
reads and writes the gateway makes.

Firing (the transaction that turns a fire time into exactly one job) is an operation of the
lifecycle module (shared/lifecycle/firing.py); the statements are in queries.sql.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.arrays import parse_array
from shared.db.jobs import Executor, JobSpec
from shared.db.queries import q

CONCURRENCY = ("forbid", "allow", "replace")
CATCH_UP = ("skip", "once", "all")
# a run that ended in one of these counts towards max_failures (CANCELLED does not)
FAILED_STATES = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    id: int
    name: str
    user: str
    cron: str
    timezone: str
    job: Mapping[str, Any]  # job_to_json of the spec its jobs are made from
    enabled: bool
    concurrency: str
    catch_up: str
    max_failures: int
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: int | None
    run_count: int
    failure_count: int
    consecutive_failures: int
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Schedule:
        return cls(id=row["id"], name=row["name"], user=row["user_name"], cron=row["cron"],
                   timezone=row["timezone"], job=row["job_spec"], enabled=row["enabled"],
                   concurrency=row["concurrency"], catch_up=row["catch_up"],
                   max_failures=row["max_failures"], next_run_at=row["next_run_at"],
                   last_run_at=row["last_run_at"], last_job_id=row["last_job_id"],
                   run_count=row["run_count"], failure_count=row["failure_count"],
                   consecutive_failures=row["consecutive_failures"],
                   disabled_reason=row["disabled_reason"], created_at=row["created_at"],
                   updated_at=row["updated_at"])


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSchedule:
    """What POST /schedules asks for, validated."""

    name: str
    user: str
    cron: str
    timezone: str
    job: JobSpec
    enabled: bool = True
    concurrency: str = "forbid"
    catch_up: str = "once"
    max_failures: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One fire time acted on: the job it made, or why it was skipped."""

    id: int
    schedule_id: int
    fire_at: datetime
    kind: str  # cron | catch-up | manual
    job_id: int | None
    skipped: str | None
    state: str | None  # the job's final state once settled, its current state before
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Run:
        return cls(id=row["id"], schedule_id=row["schedule_id"], fire_at=row["fire_at"],
                   kind=row["kind"], job_id=row["job_id"], skipped=row["skipped"],
                   state=row["state"], created_at=row["created_at"])


# --- the job a schedule makes ------------------------------------------------------------------
_JOB_FIELDS = ("script", "cpus", "name", "memory_mb", "time_limit_s", "submit_dir", "requeue",
               "priority", "hold", "retries", "retry_delay_s", "workdir", "stdout_path",
               "stderr_path", "nice", "partition")


def job_to_json(spec: JobSpec) -> dict[str, Any]:
    """The part of a validated submission a schedule keeps (its user is the schedule's owner;
    a begin time or a dependency make no sense for a job that does not exist yet)."""
    out: dict[str, Any] = {f: getattr(spec, f) for f in _JOB_FIELDS}
    out["env"] = dict(spec.env)
    out["array"] = spec.array.spec if spec.array else None
    return out


def job_from_json(job: Mapping[str, Any], *, user: str, schedule_id: int,
                  max_array_size: int, env: Mapping[str, str] | None = None) -> JobSpec:
    """The spec of one fire's job (`env` adds to the schedule's environment)."""
    fields = {f: job[f] for f in _JOB_FIELDS if f in job}
    array = parse_array(job["array"], max_size=max_array_size) if job.get("array") else None
    return JobSpec(**fields, user=user, env={**job.get("env", {}), **(env or {})},
                   array=array, schedule_id=schedule_id)


class ScheduleStore:
    """Schedules, scoped to an owner where one is given (another user's reads as None)."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def create(self, s: NewSchedule, *, next_run_at: datetime | None) -> Schedule | None:
        """None when the user already has a schedule of that name."""
        try:
            row = await self.db.fetchrow(
                q("schedule_insert"), s.name, s.user, s.cron, s.timezone, job_to_json(s.job),
                s.enabled, next_run_at, s.concurrency, s.catch_up, s.max_failures)
        except asyncpg.UniqueViolationError:
            return None
        return Schedule.from_row(row) if row else None

    async def get(self, schedule_id: int, *, owner: str | None = None) -> Schedule | None:
        row = await self.db.fetchrow(q("schedule_get"), schedule_id, owner)
        return Schedule.from_row(row) if row else None

    async def by_name(self, user: str, name: str) -> Schedule | None:
        row = await self.db.fetchrow(q("schedule_by_name"), user, name)
        return Schedule.from_row(row) if row else None

    async def page(self, *, owner: str | None, name: str | None = None,
                   after_id: int | None = None, limit: int = 100) -> list[Schedule]:
        rows = await self.db.fetch(q("schedule_list"), owner, name, after_id, limit)
        return [Schedule.from_row(r) for r in rows]

    async def update(self, schedule_id: int, *, owner: str | None, name: str, cron: str,
                     timezone: str, job: Mapping[str, Any], concurrency: str, catch_up: str,
                     max_failures: int, next_run_at: datetime | None) -> Schedule | None:
        """The whole schedule as merged by the caller; None: no such schedule of `owner`'s.
        Raises asyncpg.UniqueViolationError when the new name is taken."""
        row = await self.db.fetchrow(q("schedule_update"), schedule_id, owner, name, cron,
                                     timezone, dict(job), concurrency, catch_up, next_run_at,
                                     max_failures)
        return Schedule.from_row(row) if row else None

    async def enable(self, schedule_id: int, *, owner: str | None,
                     next_run_at: datetime) -> Schedule | None:
        row = await self.db.fetchrow(q("schedule_enable"), schedule_id, owner, next_run_at)
        return Schedule.from_row(row) if row else None

    async def disable(self, schedule_id: int, *, owner: str | None,
                      reason: str | None = None) -> Schedule | None:
        row = await self.db.fetchrow(q("schedule_disable"), schedule_id, owner, reason)
        return Schedule.from_row(row) if row else None

    async def delete(self, schedule_id: int, *, owner: str | None) -> bool:
        return await self.db.fetchval(q("schedule_delete"), schedule_id, owner) is not None

    async def runs(self, schedule_id: int, *, before_id: int | None = None,
                   limit: int = 100) -> list[Run]:
        rows = await self.db.fetch(q("schedule_runs"), schedule_id, before_id, limit)
        return [Run.from_row(r) for r in rows]
