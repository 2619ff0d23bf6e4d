"""The reconciler: makes Redis agree with PostgreSQL, and finishes what crashes left half done.

PostgreSQL is the record; everything in Redis can be rebuilt from it. A pass, every
SCNS_RECONCILE_S and on demand (a `wake:reconciler` hint, `scns reconcile`):

0. after a Redis restart that lost everything (the allocation epoch is missing, so nothing is
   being placed), rebuilds every allocation record and counter from PostgreSQL's unreleased
   allocations and reopens the epoch;
1. releases Redis allocation records that PostgreSQL does not hold (a job ended, its release
   was lost) and allocation rows whose attempt is no longer active;
2. corrects counters that differ from the sum of the records (one atomic script), then
   re-creates records PostgreSQL holds but Redis lacks (the scheduler died between its
   PostgreSQL write and the Lua step): a RUNNING job is recorded whatever the free capacity, an
   ALLOCATED one only if it fits, else it goes back to PENDING;
3. finishes jobs on workers the registry declared gone for longer than SCNS_NODE_FAIL_GRACE_S:
   RUNNING ones become NODE_FAIL (then a new attempt if they asked for requeue), ALLOCATED ones,
   which never started, go back to PENDING;
4. re-enqueues ALLOCATED jobs whose arq launch vanished (same attempt: the guard makes a
   duplicate harmless), and re-sends cancel and requeue requests a worker has not acted on.

Every job transition among these is an operation of the lifecycle module (shared/lifecycle).

Every repair is a guarded SQL update or an idempotent script, and a pass reads before it writes:
on a quiet, consistent system it writes nothing. Several replicas may run; a PostgreSQL advisory
lock lets one act at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass, field

import orjson
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from shared import clock
from shared.allocation import AllocationRecord
from shared.db import UNAVAILABLE
from shared.db.jobs import Job
from shared.db.repairs import Active, RepairStore, Unreleased
from shared.leader import RECONCILER_LOCK_ID, Leadership
from shared.redis import aw
from shared.states import JobState, PendingReason
from shared.wakeup import Wakeups
from shared.wiring import Wiring

log = logging.getLogger(__name__)

REPAIRS = Counter("scns_reconciler_repairs_total", "Repairs made, by kind", ["kind"])
PASSES = Histogram("scns_reconciler_pass_seconds", "Duration of one reconcile pass")
CANCEL_RESEND_AFTER_S = 60.0


@dataclass(slots=True)
class Report:
    restored_records: int = 0
    stale_records_released: int = 0
    records_recreated: int = 0
    running_recorded: int = 0
    handed_back_no_room: int = 0
    orphan_rows_released: int = 0
    counters_fixed: int = 0
    node_failed: int = 0
    requeued: int = 0
    handed_back_lost_worker: int = 0
    reenqueued: int = 0
    cancels_resent: int = 0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "notes"}

    @property
    def total(self) -> int:
        return sum(self.counts().values())


class Reconciler:
    def __init__(self, wiring: Wiring) -> None:
        self.settings = wiring.settings
        self.redis = wiring.redis
        self.keys = wiring.keys
        self.membership = wiring.membership
        self.allocator = wiring.allocator
        self.lifecycle = wiring.lifecycle
        self.repairs = RepairStore(wiring.pool)
        self.wakeups = Wakeups(wiring.redis, wiring.keys.wakeup("reconciler"))

    async def run_pass(self) -> Report:
        r = Report()
        with PASSES.time():
            await self._rebuild_if_lost(r)
            missing = await self._records(r)
            await self._counters(r)  # before re-creating: free capacity must be right
            for row in missing:
                await self._recreate(r, row)
            # PostgreSQL before Redis (see _gone): who is down, then what runs, then who is back
            lost = await self.repairs.lost_workers(self.settings.node_fail_grace_s)
            active = await self.repairs.active()
            live = {m.worker_id for m in await self.membership.live_members()}
            await self._lost_workers(r, await self._gone(lost, live), active)
            await self._deliveries(r, live, active)
        for kind, n in r.counts().items():
            if n:
                REPAIRS.labels(kind).inc(n)
        if r.total:
            log.warning("reconcile repaired %d things: %s", r.total,
                        ", ".join(f"{k}={v}" for k, v in r.counts().items() if v),
                        extra={"event": "reconciled", **r.counts()})
        else:
            log.debug("reconcile: consistent", extra={"event": "reconciled"})
        return r

    # --- 0. after Redis lost everything -----------------------------------------------------
    async def _rebuild_if_lost(self, r: Report) -> None:
        if await self.allocator.ready():
            return
        rows = [x for x in await self.repairs.unreleased() if x.current]
        records = [AllocationRecord(job_id=x.job_id, worker_id=x.worker_id, cpus=x.cpus,
                                    memory_mb=x.memory_mb, attempt=x.attempt) for x in rows]
        restored = await self.allocator.restore(records, epoch=str(clock.time()))
        r.restored_records = max(restored, 0)
        if restored >= 0:
            r.notes.append("allocation records rebuilt from PostgreSQL; placement resumed")
            log.warning("allocation epoch was missing (Redis lost its data): rebuilt %d "
                        "records from PostgreSQL", restored, extra={"event": "epoch-rebuilt"})

    # --- 1. records against rows ----------------------------------------------------------
    async def _records(self, r: Report) -> list[Unreleased]:
        """Release what Redis holds and PostgreSQL does not; return what PostgreSQL holds and
        Redis lacks (re-created once the counters are right)."""
        records = await self.allocator.records()  # Redis first: see the module docstring
        rows = await self.repairs.unreleased()
        held = {(x.job_id, x.attempt) for x in rows if x.current}
        for rec in records.values():
            if (rec.job_id, rec.attempt) not in held:
                r.stale_records_released += await self.lifecycle.release_stale(rec)
        missing: list[Unreleased] = []
        for row in rows:
            if not row.current:
                r.orphan_rows_released += await self.repairs.release_orphan(row.job_id,
                                                                            row.attempt)
                continue
            existing = records.get(row.job_id)
            if (existing is not None and existing.attempt == row.attempt) \
                    or row.age_s < self.settings.repair_grace_s:
                continue
            missing.append(row)
        return missing

    async def _recreate(self, r: Report, row: Unreleased) -> None:
        done = await self.lifecycle.restore_allocation(row)
        r.running_recorded += done == "recorded-running"
        r.records_recreated += done == "recreated"
        r.handed_back_no_room += done == "handed-back"

    # --- 2. counters ---------------------------------------------------------------------
    async def _counters(self, r: Report) -> None:
        records = await self.allocator.records()
        workers = {rec.worker_id for rec in records.values()}
        workers |= {m.worker_id for m in await self.membership.members()}
        async for key in self.redis.scan_iter(match=self.keys.worker_alloc_pattern(), count=500):
            workers.add(key.rsplit(":", 1)[-1])
        ids = sorted(workers)
        usage = await self.allocator.usage(ids)
        cluster = await self.allocator.cluster_usage()
        want_c: dict[str, int] = dict.fromkeys(ids, 0)
        want_m: dict[str, int] = dict.fromkeys(ids, 0)
        for rec in records.values():
            want_c[rec.worker_id] += rec.cpus
            want_m[rec.worker_id] += rec.memory_mb
        drift = any(usage[w].cpus != want_c[w] or usage[w].memory_mb != want_m[w] for w in ids) \
            or cluster.cpus != sum(want_c.values()) \
            or cluster.memory_mb != sum(want_m.values())
        if drift:  # re-checked and fixed atomically: records may have moved since our reads
            r.counters_fixed += await self.allocator.recount(ids)

    # --- 3. jobs on workers that are gone ------------------------------------------------
    async def _gone(self, lost: dict[str, int | None], live: set[str]) -> set[str]:
        """Of the workers PostgreSQL has had down for the grace period (read first), those
        Redis, read after, still shows gone: not live, no lease being renewed (a worker whose
        partition healed renews its lease before the registry records its return), and no
        departure PostgreSQL has not recorded yet (a worker that came back and left again
        while the registry could not write: its new departure restarts the grace).

        The order is what makes this safe (shared/fencing.py): a job read as RUNNING on a
        worker that Redis, afterwards, shows without a lease was started before that worker's
        last renewal; its executor, without a renewal for TTL + grace since, has SIGKILLed it
        a margin ago, and if it renews later, that is after the kill."""
        candidates = [w for w in lost if w not in live]
        gone: set[str] = set()
        for o in await self.membership.observe_ids(candidates):
            if o.lease is not None and not o.lease.bye:
                continue
            m = o.member
            if m is not None and (m.live or m.left_at != lost[o.worker_id]):
                continue
            gone.add(o.worker_id)
        return gone

    async def _lost_workers(self, r: Report, lost: set[str], active: list[Active]) -> None:
        gone = [a.job for a in active if a.job.worker_id in lost]
        unstarted = [j for j in gone if j.state is JobState.ALLOCATED]
        r.handed_back_lost_worker += await self.lifecycle.hand_back(
            [self.lifecycle.slot(j) for j in unstarted], PendingReason.PRIORITY)
        for job in gone:
            if job.state is not JobState.RUNNING:
                continue
            ended = await self.lifecycle.node_fail(job, f"worker {job.worker_id} lost")
            if ended is None:
                continue
            r.node_failed += 1
            r.requeued += ended.again

    # --- 4. launches that vanished, stop requests not acted on ---------------------------
    async def _deliveries(self, r: Report, live: set[str], active: list[Active]) -> None:
        r.reenqueued += await self.lifecycle.relaunch(
            [a.job for a in active if a.job.state is JobState.ALLOCATED
             and a.job.worker_id in live and a.age_s >= self.settings.repair_grace_s])
        for a in active:
            job: Job = a.job
            if job.state is JobState.RUNNING and (job.cancel_requested or job.requeue_requested) \
                    and job.worker_id in live \
                    and a.age_s > CANCEL_RESEND_AFTER_S + self.settings.kill_grace_s:
                await self.lifecycle.resend_stop(job)
                r.cancels_resent += 1

    # --- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, leadership: Leadership) -> None:
        listener = asyncio.create_task(self.wakeups.listen(stop), name="reconciler-wakeups")
        try:
            while not stop.is_set():
                await self.wakeups.wait(stop, self.settings.reconcile_s)
                if stop.is_set():
                    return
                requests = self.wakeups.take()
                if not await leadership.check():
                    continue
                try:
                    report = await self.run_pass()
                except RedisError as e:
                    log.warning("reconcile pass failed, Redis unavailable: %s", e)
                    continue
                except UNAVAILABLE as e:
                    log.warning("reconcile pass failed, PostgreSQL unavailable: %s", e)
                    continue
                for request_id in requests:
                    await self._answer(request_id, report)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _answer(self, request_id: str, report: Report) -> None:
        """On-demand passes leave their report where the requester can read it."""
        body = orjson.dumps({"request": request_id, "at": clock.time(), **report.counts(),
                             "notes": report.notes})
        await aw(self.redis.set(self.keys.reconcile_report(request_id), body, ex=600))


async def _main() -> int:
    from shared import runtime, service

    async with service.started("reconciler", pool_size=4) as ctx:
        reconciler = Reconciler(ctx.wiring)
        log.info("reconciler started", extra={"event": "started",
                                              "period_s": ctx.settings.reconcile_s})
        reconciler.wakeups.set()  # a first pass at once: it (re)opens the allocation epoch
        async with Leadership(ctx.settings.database_url, lock_id=RECONCILER_LOCK_ID,
                              name="reconciler") as leadership:
            await runtime.supervise({"reconciler": reconciler.run(ctx.stop, leadership)},
                                    ctx.stop)
    return 0

def main() -> int:
    from shared import runtime

    return runtime.run(_main)
