"""The job lifecycle: every operation that changes a job, each written once.

Each operation runs its steps in the order ARCHITECTURE.md fixes: PostgreSQL (one guarded
statement, the record), then Redis (capacity), then the dispatch (the launch on a worker's
queue), then the event, then the wake-up hint. A step after the first may be lost to a crash or
an outage; the record in PostgreSQL is enough for the reconciler (and the scheduler's timer) to
finish it, so a later step failing on Redis is logged, not raised.

The scheduler, executor, reconciler and gateway call these methods; none of them writes job
state itself (tests/unit/test_transitions.py checks it). User controls (cancel, hold, release,
requeue, update) live in controls.py on the same object.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import clock, failpoints
from shared.allocation import AllocationRecord, Allocator, Outcome
from shared.batching import Batcher
from shared.bus import StreamBus
from shared.db.jobs import Job, JobSpec, JobStore, Usage, spec_digest
from shared.db.repairs import Unreleased
from shared.dispatch import ArqDispatcher, Dispatch
from shared.errors import ConductorError, IdempotencyConflict, NotFound
from shared.events import (
    CancelRequested,
    Event,
    JobAllocated,
    JobFinished,
    JobStarted,
    JobSubmitted,
)
from shared.keys import Keys
from shared.lifecycle.policy import follow_up
from shared.lifecycle.store import Allocated, Ended, Finish, Target, TransitionStore
from shared.states import JobState, PendingReason

log = logging.getLogger(__name__)
SINGLETON = Target(job_id=None, is_array=False, array_id=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placed:
    placed: list[Allocated]
    rolled_back: int


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _Steps:
    """One operation's Redis steps (LifecycleCore._emit)."""

    events: tuple[Event, ...]
    release: tuple[Dispatch, ...]
    withdraw: tuple[Dispatch, ...]
    wake: str | None


class LifecycleCore:
    """The operations the system itself drives; controls.py adds the users' controls."""

    def __init__(self, *, pool: asyncpg.Pool[Any], redis: Redis, keys: Keys,
                 allocator: Allocator, dispatcher: ArqDispatcher, bus: StreamBus) -> None:
        self.redis = redis
        self.keys = keys
        self.allocator = allocator
        self.dispatcher = dispatcher
        self.bus = bus
        self.pool = pool
        self.store = TransitionStore(pool)
        self.jobs = JobStore(pool)
        # an executor's starts and ends that come together are written together (one commit)
        # so are the submits a gateway receives together (those without an idempotency key)
        self._inserts: Batcher[JobSpec, Job] = Batcher(self.store.insert_many)
        self._starts: Batcher[tuple[int, int, str], Job | None] = Batcher(self.store.start_many)
        self._finishes: Batcher[Finish, Ended | None] = Batcher(self.store.finish_many)
        # and so are the Redis steps that follow them
        self._redis_steps: Batcher[_Steps, None] = Batcher(self._emit_many)

    # --- submit ----------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, *, idempotency_key: str | None = None
                     ) -> tuple[Job, bool]:
        """Durable before anything else; `created` is False for a repeat of an idempotency key
        (the job the first request made, announced again while it still waits)."""
        job: Job | None
        if spec.array is None and spec.dependency_edges is None and idempotency_key is None:
            job = await self._inserts(spec)
        elif spec.array is None and spec.dependency_edges is None:
            job = await self.store.insert(spec, idempotency_key=idempotency_key)
        else:
            job = await self._insert_grouped(spec, idempotency_key)
        created = job is not None
        if job is None:
            job = await self._by_key(spec, idempotency_key)
        if created or job.state is JobState.PENDING:
            await self._emit([JobSubmitted(
                job_id=job.id, cpus=job.cpus, memory_mb=job.memory_mb, priority=job.priority,
                array_size=spec.array.count if spec.array else None,
                dependency=spec.dependency_edges is not None)], wake=str(job.id))
        return job, created

    async def dependency_targets(self, spec: JobSpec) -> list[Target]:
        """What the spec's dependency names; NotFound names every unknown job."""
        dep = spec.dependency_edges
        if dep is None or not dep.targets:
            return []
        found = await self.store.resolve_refs(dep.targets, spec.user)
        unknown = [str(r) for r, t in zip(dep.targets, found, strict=True) if t is None]
        if unknown:
            raise NotFound(f"dependency on unknown job{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(unknown)}")
        return [t for t in found if t is not None]

    async def _insert_grouped(self, spec: JobSpec, key: str | None) -> Job | None:
        """An array and/or a job with a dependency: the rows in one transaction (the edges'
        targets checked first: an unknown one is refused before anything is written)."""
        dep = spec.dependency_edges
        targets = await self.dependency_targets(spec)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                store = TransitionStore(conn)
                job = (await store.insert_array(spec, idempotency_key=key) if spec.array
                       else await store.insert(spec, idempotency_key=key))
                if job is not None and dep is not None:
                    it = iter(targets)
                    await store.insert_dependency(
                        dependent_id=job.id, is_array=spec.array is not None, dep=dep,
                        user=spec.user, name=spec.name,
                        targets=[SINGLETON if e.target is None else next(it)
                                 for e in dep.edges])
                return job
        except asyncpg.UniqueViolationError:
            if key is None:
                raise
            return None  # the key was used (the whole insert rolled back): find what it made

    async def _by_key(self, spec: JobSpec, key: str | None) -> Job:
        found = await self.jobs.by_key(spec.user, key) if key is not None else None
        if found is None:  # cannot happen: the conflicting row is committed before DO NOTHING
            raise ConductorError(f"job insert returned nothing (idempotency key {key!r})")
        job, digest = found
        if digest != spec_digest(spec):
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used for a different request "
                f"(job {job.id}); use a new key for a new job")
        return job

    # --- placement (the scheduler) ---------------------------------------------------------
    async def place(self, plan: Sequence[tuple[int, int, str]]) -> Placed:
        """Commit the scheduler's decisions (job, attempt, worker)."""
        won = await self.store.place(plan)
        failpoints.hit("scheduler:after-pg-write")
        outcomes = await self.allocator.allocate_many(
            [(a.job_id, a.attempt, a.cpus, a.memory_mb, a.worker_id) for a in won])
        failpoints.hit("scheduler:after-lua")
        ok: list[Allocated] = []
        back: list[tuple[int, int, str]] = []
        for a, o in zip(won, outcomes, strict=True):
            if o.outcome is Outcome.PLACED and o.worker_id == a.worker_id:
                ok.append(a)
                continue
            if o.outcome is Outcome.HELD:
                log.warning("an older attempt still holds an allocation; the reconciler will "
                            "release it", extra={"job_id": a.job_id,
                                                 "held_attempt": o.held_attempt})
            back.append((a.job_id, a.attempt, a.worker_id))
        if back:  # the snapshot was stale: nothing was taken in Redis, nothing to release
            await self.store.hand_back(back, PendingReason.RESOURCES)
        await self.dispatcher.enqueue([Dispatch(worker_id=a.worker_id, job_id=a.job_id,
                                                attempt=a.attempt) for a in ok])
        await self._emit([JobAllocated(job_id=a.job_id, attempt=a.attempt, worker_id=a.worker_id,
                                       cpus=a.cpus, memory_mb=a.memory_mb) for a in ok])
        return Placed(placed=ok, rolled_back=len(back))

    async def set_reasons(self, reasons: dict[int, str]) -> None:
        """Why each job the scheduler could not place waits (never over a sticky reason)."""
        await self.store.set_reasons(reasons)

    async def promote_due(self) -> float | None:
        """Jobs whose begin time has come become placeable; returns the seconds until the next
        begin time (None: no job waits for one)."""
        promoted, next_in_s = await self.store.promote_due()
        if promoted:
            log.info("%d jobs reached their begin time", promoted,
                     extra={"event": "begin-time", "count": promoted})
        return next_in_s

    # --- execution (the executor) ----------------------------------------------------------
    async def start(self, job_id: int, attempt: int, worker_id: str) -> Job | None:
        """The fence: ALLOCATED -> RUNNING for this attempt on this worker, once. None: the
        launch is stale (another attempt, another worker, cancelled, already started)."""
        return await self._starts((job_id, attempt, worker_id))

    async def started(self, job: Job, pid: int | None) -> None:
        await self._emit([JobStarted(job_id=job.id, attempt=job.attempt,
                                     worker_id=str(job.worker_id), pid=pid)])

    async def finish(self, job: Job, state: JobState, *, exit_code: int | None = None,
                     signal: int | None = None, reason: str | None = None,
                     usage: Usage | None = None) -> Ended | None:
        """The end of `job`'s current attempt on its worker, and what follows: the job ends, or
        (a retry, a requeue, a --requeue job whose node failed) goes on as a new attempt.
        None when the attempt is no longer this worker's to end (a stale executor)."""
        fu = follow_up(job, state)
        ended = await self._finishes(Finish(
            job=job, state=state, exit_code=exit_code, signal=signal, reason=reason,
            usage=usage or Usage(), again_after_s=fu.delay_s if fu else None,
            retry=fu.retry if fu else False))
        events: list[Event] = []
        if ended is not None:
            started = job.started_at.timestamp() if job.started_at else None
            events.append(JobFinished(
                job_id=job.id, attempt=job.attempt, worker_id=job.worker_id,
                state=str(ended.state), exit_code=exit_code, signal=signal,
                reason=ended.job.reason if not ended.again else reason,
                elapsed_s=round(clock.time() - started, 3) if started else None,
                next_attempt=ended.job.attempt if ended.again else None))
            if ended.again:
                log.info("job %s goes on as attempt %d", job.id, ended.job.attempt,
                         extra={"event": "next-attempt", "job_id": job.id,
                                "attempt": ended.job.attempt, "reason": ended.job.reason})
        # the release is guarded by attempt and worker: right even when the record was not ours
        await self._emit(events, release=[self.slot(job)], wake=str(job.id))
        return ended

    async def node_fail(self, job: Job, reason: str) -> Ended | None:
        """A RUNNING job whose worker is gone (or stopped it): NODE_FAIL, then a new attempt if
        it asked for requeue (not if it was being cancelled)."""
        return await self.finish(job, JobState.NODE_FAIL, reason=reason)

    async def hand_back(self, slots: Sequence[Dispatch],
                        reason: PendingReason = PendingReason.PRIORITY) -> int:
        """ALLOCATED attempts (job, attempt, worker) that will not start where they were
        placed go back to PENDING (same attempt: nothing ran), their capacity and launches
        withdrawn."""
        back = await self.store.hand_back([(s.job_id, s.attempt, s.worker_id) for s in slots],
                                          reason)
        if not back:
            return 0
        gone = [Dispatch(worker_id=worker, job_id=job.id, attempt=job.attempt)
                for job, worker in back]
        await self._emit([], release=gone, withdraw=gone, wake="hand-back")
        return len(back)

    # --- repairs (the reconciler) ----------------------------------------------------------
    async def release_stale(self, record: AllocationRecord) -> bool:
        """Give back capacity Redis holds for an attempt PostgreSQL no longer places."""
        return await self.allocator.release(job_id=record.job_id, attempt=record.attempt,
                                            worker_id=record.worker_id) == 1

    async def restore_allocation(self, row: Unreleased) -> str:
        """Redis lost the record of a placement PostgreSQL holds: a RUNNING job is recorded
        whatever the free capacity (it is consumed); an ALLOCATED one only if it still fits,
        else it is handed back. Returns what was done."""
        record = AllocationRecord(job_id=row.job_id, worker_id=row.worker_id, cpus=row.cpus,
                                  memory_mb=row.memory_mb, attempt=row.attempt)
        if row.state == JobState.RUNNING:
            return "recorded-running" if await self.allocator.record_running(record) else ""
        placed = await self.allocator.allocate(job_id=row.job_id, attempt=row.attempt,
                                               cpus=row.cpus, memory_mb=row.memory_mb,
                                               candidates=[row.worker_id])
        if placed.outcome is Outcome.PLACED:
            return "recreated"
        if placed.outcome is Outcome.NOT_READY:
            return ""
        job = await self.jobs.get(row.job_id)
        if job is None or job.state is not JobState.ALLOCATED or job.attempt != row.attempt:
            return ""
        return "handed-back" if await self.hand_back([self.slot(job)],
                                                     PendingReason.RESOURCES) else ""

    async def relaunch(self, jobs: Sequence[Job]) -> int:
        """Enqueue again the launches of ALLOCATED jobs that vanished (same attempt: the start
        fence makes a duplicate harmless)."""
        items = [Dispatch(worker_id=str(j.worker_id), job_id=j.id, attempt=j.attempt)
                 for j in jobs if j.state is JobState.ALLOCATED and j.worker_id]
        lost = await self.dispatcher.missing(items)
        return sum(await self.dispatcher.enqueue(lost))

    # --- the Redis side of every operation -------------------------------------------------
    @staticmethod
    def slot(job: Job) -> Dispatch:
        """(worker, job, attempt): what a placement holds and a launch carries."""
        return Dispatch(worker_id=str(job.worker_id), job_id=job.id, attempt=job.attempt)

    async def resend_stop(self, job: Job) -> None:
        """A stop (cancel or requeue) recorded for a RUNNING job, sent to its executor again."""
        await self._control(job, requeue=job.requeue_requested and not job.cancel_requested)

    async def _emit(self, events: Sequence[Event], *, release: Sequence[Dispatch] = (),
                    withdraw: Sequence[Dispatch] = (), wake: str | None = None) -> None:
        """The Redis steps after PostgreSQL, in their order: capacity released, launches
        withdrawn, events, the scheduler's wake-up. The steps of the operations that end
        together (an executor's starts and ends, a gateway's submits) go in one round trip,
        each operation's in its own order. Redis being away loses nothing: the reconciler
        releases what PostgreSQL released and withdraws nothing that could run (the start
        fence refuses it), and the scheduler's timer finds what the events would have
        announced."""
        if not events and not release and not withdraw and wake is None:
            return
        await self._redis_steps(_Steps(events=tuple(events), release=tuple(release),
                                       withdraw=tuple(withdraw), wake=wake))

    async def _emit_many(self, items: Sequence[_Steps]) -> list[None]:
        release = [d for it in items for d in it.release]
        withdraw = [d for it in items for d in it.withdraw]
        events = [e for it in items for e in it.events]
        # one hint is enough: the scheduler reads its queue, not the hint's text
        wake = next((it.wake for it in reversed(items) if it.wake is not None), None)
        try:
            if not release and not withdraw and wake is None:
                await self.bus.publish_many(events)  # one step: no pipeline to build
                return [None] * len(items)
            async with self.redis.pipeline(transaction=False) as pipe:
                for slot in release:
                    await self.allocator.release_in(pipe, job_id=slot.job_id,
                                                    attempt=slot.attempt,
                                                    worker_id=slot.worker_id)
                for item in withdraw:
                    self.dispatcher.withdraw_in(pipe, item)
                for e in events:
                    self.bus.publish_in(pipe, e)
                if wake is not None:
                    pipe.publish(self.keys.wakeup("scheduler"), wake)
                await pipe.execute()
            await self.bus.published(events)
        except RedisError as e:
            log.warning("recorded in PostgreSQL, but Redis did not take the rest (the "
                        "reconciler repairs it): %s", e, extra={"event": "redis-step-lost"})
        return [None] * len(items)

    async def _control(self, job: Job, *, requeue: bool) -> None:
        """Ask the executor running `job` to stop it (a stream: it survives the executor's
        restart; the reconciler re-sends requests not acted on)."""
        try:
            await self.bus.publish_to(self.keys.control(str(job.worker_id)),
                                      CancelRequested(job_id=job.id, attempt=job.attempt,
                                                      requeue=requeue))
        except RedisError as e:
            log.warning("stop request for job %s recorded, not yet sent: %s", job.id, e)

