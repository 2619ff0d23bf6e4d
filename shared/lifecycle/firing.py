"""Schedules making jobs: a fire time becomes exactly one job, across any number of replicas.

One transaction per schedule and tick: lock the schedule if it is still due (SKIP LOCKED: a
replica firing it right now is left to it), work out which fire times are due and what each
becomes under the schedule's policies, insert the jobs (carrying `schedule_id`) and one
schedule_runs row per fire time (unique per schedule: a replica that got past the lock with a
stale read conflicts here and rolls back, its job with it), move next_run_at past now, commit.
A crash anywhere before the commit leaves nothing behind, so the fire is simply made by the
next tick (or the next leader); after it, the fire is done. The events, the wake-up and the
cancels of `replace` follow the commit, as in every lifecycle operation.

Policies:
* On time: one fire time is due and it is at most SCNS_CRON_GRACE_S late. Otherwise the due
  fire times were missed (no scheduler ran): `catch_up` skip records them as skipped, once
  makes a job for the latest only, all for each (at most SCNS_CRON_MAX_CATCHUP, the latest).
* `concurrency` forbid skips a fire while a run is active (recorded, with the job it waited
  for); fires being caught up are owed, so under forbid they wait (afterany) for each other
  instead. allow makes it anyway; replace makes it wait (afterany) for the active runs, which
  are cancelled.
* Settling: once a run's job has ended for good (its last attempt; every element of an array),
  the run records the state and the schedule counts it: FAILED, TIMEOUT, OUT_OF_MEMORY and
  NODE_FAIL add to the failure streak, COMPLETED ends it, CANCELLED does neither. A streak of
  max_failures disables the schedule (`schedule-disabled`); enabling it resets the streak.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared import clock, failpoints
from shared.cron import CronError, due_fires, next_fire, parse_cron, zone
from shared.db.jobs import Job, JobSpec
from shared.db.queries import q
from shared.db.schedules import FAILED_STATES, Schedule, job_from_json
from shared.dependencies import parse_dependency
from shared.errors import ConductorError, InvalidTransition, NotFound
from shared.events import Event, JobSubmitted, ScheduleDisabled, ScheduleFired
from shared.lifecycle.controls import Lifecycle
from shared.lifecycle.store import Target, TransitionStore

log = logging.getLogger(__name__)

SETTLE_BATCH = 500
_STATE_ORDER = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fire:
    """A fire time acted on."""

    schedule_id: int
    fire_at: datetime
    kind: str
    job_id: int | None = None
    skipped: str | None = None


@dataclass(slots=True)
class _Outcome:
    fires: list[Fire] = field(default_factory=list)
    jobs: list[tuple[Job, JobSpec]] = field(default_factory=list)
    cancel: list[tuple[int, bool]] = field(default_factory=list)  # (job, is an array)
    events: list[Event] = field(default_factory=list)


def run_state(states: Sequence[str]) -> str:
    """One state for a run: its job's, or for an array the worst of its elements'."""
    if all(s == "COMPLETED" for s in states):
        return "COMPLETED"
    return next(s for s in (*_STATE_ORDER, *states) if s in states)


class Firing:
    def __init__(self, core: Lifecycle, *, max_catchup: int = 100, grace_s: float = 60.0,
                 max_array_size: int = 100_001) -> None:
        self.core = core
        self.pool = core.pool
        self.max_catchup = max_catchup
        self.grace_s = grace_s
        self.max_array_size = max_array_size

    # --- cron ------------------------------------------------------------------------------
    async def due(self, now: datetime, limit: int = 100) -> list[int]:
        return [r["id"] for r in await self.pool.fetch(q("schedules_due"), now, limit)]

    async def next_due(self) -> datetime | None:
        at: datetime | None = await self.pool.fetchval(q("schedule_next_due"))
        return at

    async def fire(self, schedule_id: int, now: datetime) -> list[Fire]:
        """Make what the schedule's due fire times call for; [] when it was not due (any more)
        or another replica is firing it."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(q("schedule_lock_due"), schedule_id, now)
                if row is None:
                    return []
                out = await self._fire_due(conn, Schedule.from_row(row), now)
                failpoints.hit("cron:before-commit")
        except asyncpg.UniqueViolationError:
            log.info("fire of schedule %d already made elsewhere", schedule_id)
            return []
        await self._after(out)
        return out.fires

    async def trigger(self, schedule_id: int, *, owner: str | None,
                      now: datetime | None = None) -> Fire:
        """One run now (`scns schedule trigger`), under the schedule's concurrency policy;
        the cron fire times are not touched."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("schedule_lock"), schedule_id, owner)
            if row is None:
                raise NotFound(f"schedule {schedule_id} does not exist")
            s = Schedule.from_row(row)
            at = now or clock.utcnow()
            out = _Outcome()
            await self._make(conn, s, [(at, "manual")], out)
            await self._record(conn, s, out, next_run_at=None)
        await self._after(out)
        return out.fires[0]

    async def _fire_due(self, conn: Any, s: Schedule, now: datetime) -> _Outcome:
        out = _Outcome()
        try:
            cron, tz = parse_cron(s.cron), zone(s.timezone)
        except CronError as e:  # stored before a tzdata change, say: stop, say why
            await self._disable(conn, s, f"the schedule no longer parses: {e}", out)
            return out
        start = s.next_run_at or now
        fires, dropped = due_fires(cron, tz, start, now, limit=self.max_catchup)
        nxt = next_fire(cron, tz, now)
        if not fires:  # next_run_at was not a fire time (the expression changed): move on
            await conn.execute(q("schedule_fired"), s.id, nxt, None, None, 0)
            return out
        on_time = len(fires) == 1 and not dropped and \
            (now - fires[0]).total_seconds() <= self.grace_s
        if on_time:
            await self._make(conn, s, [(fires[0], "cron")], out)
        else:
            why = f"missed while no scheduler was running (catch_up={s.catch_up})"
            make = {"skip": [], "once": fires[-1:], "all": fires}[s.catch_up]
            skipped = [f for f in fires if f not in make]
            out.fires += [Fire(schedule_id=s.id, fire_at=f, kind="catch-up", skipped=why)
                          for f in skipped]
            await self._make(conn, s, [(f, "catch-up") for f in make], out)
            if dropped:
                log.warning("schedule %d missed more than %d fire times; the older ones are "
                            "not caught up", s.id, self.max_catchup,
                            extra={"event": "catch-up-dropped", "schedule_id": s.id})
        await self._record(conn, s, out, next_run_at=nxt)
        return out

    async def _make(self, conn: Any, s: Schedule, fires: Sequence[tuple[datetime, str]],
                    out: _Outcome) -> None:
        """A job per fire time, as the concurrency policy allows."""
        if not fires:
            return
        rows = await conn.fetch(q("schedule_active_runs"), s.id)
        active: list[int] = [r["job_id"] for r in rows]
        arrays = {r["job_id"] for r in rows if r["is_array"]}
        store = TransitionStore(conn)
        for at, kind in fires:
            # forbid skips an on-time fire while a run is active; fires being caught up are
            # all owed, so they wait for each other instead (never two at once either way)
            chain = s.concurrency == "forbid" and kind == "catch-up"
            if active and s.concurrency == "forbid" and not chain:
                out.fires.append(Fire(schedule_id=s.id, fire_at=at, kind=kind, skipped=(
                    f"the previous run (job {active[-1]}) is still active "
                    "(concurrency=forbid)")))
                continue
            spec = job_from_json(s.job, user=s.user, schedule_id=s.id,
                                 max_array_size=self.max_array_size,
                                 env={"SCNS_SCHEDULE_ID": str(s.id),
                                      "SCNS_SCHEDULE_NAME": s.name,
                                      "SCNS_SCHEDULE_FIRE_TIME": _iso(at)})
            wait_for = active if s.concurrency == "replace" or chain else []
            job = await self._insert(store, spec, after=wait_for)
            if s.concurrency == "replace":
                out.cancel += [(j, j in arrays) for j in active]
            if spec.array is not None:
                arrays.add(job.id)
            out.jobs.append((job, spec))
            out.fires.append(Fire(schedule_id=s.id, fire_at=at, kind=kind, job_id=job.id))
            active = [job.id] if s.concurrency != "allow" else [*active, job.id]

    async def _insert(self, store: TransitionStore, spec: JobSpec, *, after: Sequence[int]
                      ) -> Job:
        """The job (an array: all its elements), waiting for `after` to end if given."""
        if after:
            dep = parse_dependency("afterany:" + ":".join(str(j) for j in after))
            spec = replace(spec, dependency=dep.expr, dependency_edges=dep)
        job = (await store.insert_array(spec, idempotency_key=None) if spec.array
               else await store.insert(spec, idempotency_key=None))
        if job is None:
            raise ConductorError("job insert returned nothing")
        if spec.dependency_edges is not None:
            targets = await store.resolve_refs(spec.dependency_edges.targets, spec.user)
            await store.insert_dependency(
                dependent_id=job.id, is_array=spec.array is not None, dep=spec.dependency_edges,
                user=spec.user, name=spec.name,
                targets=[t or Target(job_id=None, is_array=False, array_id=None)
                         for t in targets])
        return job

    async def _record(self, conn: Any, s: Schedule, out: _Outcome, *,
                      next_run_at: datetime | None) -> None:
        fires = [f for f in out.fires if f.schedule_id == s.id]
        if fires:
            await conn.execute(q("schedule_record_runs"), s.id, [f.fire_at for f in fires],
                               [f.kind for f in fires], [f.job_id for f in fires],
                               [f.skipped for f in fires])
        made = [f for f in fires if f.job_id is not None]
        await conn.execute(q("schedule_fired"), s.id, next_run_at,
                           made[-1].fire_at if made else None,
                           made[-1].job_id if made else None, len(made))
        out.events += [ScheduleFired(schedule_id=s.id, name=s.name, user=s.user,
                                     fire_at=_iso(f.fire_at), kind=f.kind, job_id=f.job_id,
                                     skipped=f.skipped) for f in fires]

    async def _after(self, out: _Outcome) -> None:
        """The steps after the commit: events and wake-up, then the cancels of `replace`."""
        submitted: list[Event] = [
            JobSubmitted(job_id=j.id, cpus=j.cpus, memory_mb=j.memory_mb, priority=j.priority,
                         array_size=spec.array.count if spec.array else None,
                         dependency=spec.dependency_edges is not None) for j, spec in out.jobs]
        await self.core._emit([*submitted, *out.events],
                              wake="schedule" if out.jobs else None)
        for job_id, is_array in out.cancel:
            await self._cancel(job_id, is_array=is_array)

    async def _cancel(self, job_id: int, *, is_array: bool) -> None:
        reason = "replaced by the schedule's next run"
        with contextlib.suppress(InvalidTransition, NotFound):  # it ended meanwhile
            if is_array:
                await self.core.cancel_array(job_id, reason=reason)
            else:
                await self.core.cancel(job_id, reason=reason)

    # --- settling --------------------------------------------------------------------------
    async def settle(self) -> int:
        """Record the end of runs whose job has ended; count failures, disable a schedule on
        its max_failures-th failure in a row. Returns the runs settled. (First, runs that a
        `replace` fire replaced but whose cancel was lost with a crash are cancelled again.)"""
        for r in await self.pool.fetch(q("schedule_unreplaced")):
            log.info("replaced run (job %d) still going: cancelling it again", r["job_id"])
            await self._cancel(r["job_id"], is_array=r["is_array"])
        ended = await self.pool.fetch(q("schedule_runs_ended"), SETTLE_BATCH)
        if not ended:
            return 0
        out = _Outcome()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("schedule_settle_runs"), [r["id"] for r in ended],
                                    [run_state(r["states"]) for r in ended])
            runs = sorted(rows, key=lambda r: (r["schedule_id"], r["fire_at"], r["id"]))
            ids = sorted({r["schedule_id"] for r in runs})
            for row in await conn.fetch(q("schedule_lock_many"), ids):
                s = Schedule.from_row(row)
                mine = [r for r in runs if r["schedule_id"] == s.id]
                await self._count(conn, s, mine, out)
        await self._after(out)
        return len(rows)

    async def _count(self, conn: Any, s: Schedule, runs: Sequence[Any], out: _Outcome) -> None:
        failures, streak = s.failure_count, s.consecutive_failures
        last_failed: Any = None
        for r in runs:
            if r["state"] in FAILED_STATES:
                failures, streak, last_failed = failures + 1, streak + 1, r
            elif r["state"] == "COMPLETED":
                streak = 0
        enabled, reason = s.enabled, s.disabled_reason
        if enabled and s.max_failures and streak >= s.max_failures and last_failed is not None:
            enabled = False
            reason = (f"{streak} consecutive failed runs (the last: job {last_failed['job_id']} "
                      f"{last_failed['state']}); `scns schedule enable {s.id}` starts it again")
            out.events.append(ScheduleDisabled(schedule_id=s.id, name=s.name, user=s.user,
                                               reason=reason))
            log.warning("schedule %d disabled: %s", s.id, reason,
                        extra={"event": "schedule-disabled", "schedule_id": s.id})
        await conn.execute(q("schedule_set_counts"), s.id, failures, streak, enabled, reason)

    async def _disable(self, conn: Any, s: Schedule, reason: str, out: _Outcome) -> None:
        await conn.execute(q("schedule_set_counts"), s.id, s.failure_count,
                           s.consecutive_failures, False, reason)
        out.events.append(ScheduleDisabled(schedule_id=s.id, name=s.name, user=s.user,
                                           reason=reason))


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
