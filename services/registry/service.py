"""The registry: turns worker leases into announced membership, and keeps PostgreSQL's record.

Each sweep compares every worker's lease with the registry's record of it and announces what
changed: a new incarnation joined, a lease marked `bye` (shutdown), a lease that lapsed
(expired), or a lease taken over by a new incarnation on the same host (restarted). Every
announcement is a compare-and-set Lua script that appends the event in the same atomic step, so
several replicas can sweep at once and each change is still announced exactly once. Sweeps run
every SCNS_REGISTRY_SWEEP_S and at once when a worker publishes a wake-up hint.

PostgreSQL gets the durable record right after each announcement, and a periodic sync converges
it with Redis (covering a registry that crashed between the two, or PostgreSQL being away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError

from shared import clock
from shared.db import UNAVAILABLE
from shared.db.workers import WorkerRow, WorkerStore
from shared.keys import STREAM_TYPES
from shared.membership import Lease, Member, Observed
from shared.redis import aw
from shared.states import WorkerState
from shared.wakeup import Wakeups
from shared.wiring import Wiring

log = logging.getLogger(__name__)

ANNOUNCED = Counter("scns_registry_announcements_total", "Membership changes announced",
                    ["type", "reason"])
LIVE = Gauge("scns_registry_live_workers", "Workers currently live")
SWEEP_SECONDS = Histogram("scns_registry_sweep_seconds", "Duration of one sweep")

_PG_ERRORS = UNAVAILABLE


def now_ms() -> int:
    return clock.now_ms()


@dataclass(slots=True)
class SweepResult:
    joined: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class Registry:
    def __init__(self, wiring: Wiring) -> None:
        self.settings = wiring.settings
        self.redis = wiring.redis
        self.keys = wiring.keys
        self.membership = wiring.membership
        self.workers = WorkerStore(wiring.pool)
        self.bus = wiring.bus
        self.wakeups = Wakeups(wiring.redis, self.keys.wakeup("registry"))
        self._db_dirty = True
        self._beats: dict[str, int] = {}  # the lease heartbeat each last_heartbeat is for

    # --- one pass ------------------------------------------------------------------------
    async def sweep(self) -> SweepResult:
        with SWEEP_SECONDS.time():
            result = SweepResult()
            for o in await self.membership.observe():
                await self._settle(o, result)
            LIVE.set(await aw(self.redis.scard(self.keys.workers_live)))
            return result

    async def _settle(self, o: Observed, result: SweepResult) -> None:
        lease, member = o.lease, o.member
        if member is not None and member.live:
            if lease is None:
                await self._leave(member, "expired", result)
            elif lease.incarnation == member.incarnation:
                if lease.bye:
                    await self._leave(member, "shutdown", result)
            else:
                await self._leave(member, "restarted", result)
                if not lease.bye:
                    await self._join(lease, result)
        elif lease is not None and not lease.bye:
            await self._join(lease, result)
        elif await self.membership.retire(o.worker_id):
            result.retired.append(o.worker_id)

    async def _join(self, lease: Lease, result: SweepResult) -> None:
        at = now_ms()
        await self._restore_drain_flag(lease.worker_id)
        status, event = await self.membership.join(lease, now_ms=at)
        if status != 1:
            return
        result.joined.append(lease.worker_id)
        ANNOUNCED.labels("worker-joined", "").inc()
        log.info("worker joined", extra={"event": "worker-joined", "worker_id": lease.worker_id,
                                         "incarnation": lease.incarnation, "cpus": lease.cpus,
                                         "memory_mb": lease.memory_mb})
        drained = await aw(self.redis.sismember(self.keys.workers_drained, lease.worker_id))
        state = WorkerState.DRAINING if drained else WorkerState.READY
        await self._record(self.workers.joined(
            worker_id=lease.worker_id, incarnation=lease.incarnation, hostname=lease.hostname,
            state=state, cpus=event.cpus, memory_mb=event.memory_mb, labels=event.labels))

    async def _leave(self, member: Member, reason: str, result: SweepResult) -> None:
        at = now_ms()
        event = await self.membership.leave(member, reason=reason, now_ms=at)
        if event is None:
            return
        result.left.append((member.worker_id, reason))
        ANNOUNCED.labels("worker-left", reason).inc()
        log.info("worker left", extra={"event": "worker-left", "worker_id": member.worker_id,
                                       "incarnation": member.incarnation, "reason": reason})
        # PostgreSQL records the departure at its own now(); `at` (this registry's clock, also
        # in the member record) only names it
        await self._record(self.workers.left(worker_id=member.worker_id,
                                             incarnation=member.incarnation, reason=reason,
                                             mark=at))

    async def _restore_drain_flag(self, worker_id: str) -> None:
        """Drain flags live in PostgreSQL too: after Redis lost its data a drained worker must
        rejoin as draining, not ready."""
        try:
            row = await self.workers.get(worker_id)
        except _PG_ERRORS:
            return
        if row is not None and row.drain:
            await aw(self.redis.sadd(self.keys.workers_drained, worker_id))

    async def _record(self, write: Any) -> None:
        """Write-through to PostgreSQL; on failure the periodic sync catches up."""
        try:
            await write
        except _PG_ERRORS as e:
            self._db_dirty = True
            log.warning("could not record membership in PostgreSQL yet: %s", e)

    # --- convergence with PostgreSQL -----------------------------------------------------
    async def sync_db(self) -> None:
        """Make PostgreSQL's rows agree with Redis's records (idempotent, writes only what
        differs) and refresh `last_heartbeat` of live workers."""
        observed = await self.membership.observe()
        beats: dict[str, int] = {}
        for o in observed:
            m = o.member
            if m is None:
                continue
            if m.live:
                await self.workers.joined(
                    worker_id=m.worker_id, incarnation=m.incarnation, hostname=m.hostname,
                    state=m.state, cpus=m.cpus, memory_mb=m.memory_mb, labels=m.labels)
                if o.lease is not None and o.lease.incarnation == m.incarnation:
                    beats[m.worker_id] = o.lease.heartbeat_at
            else:
                await self.workers.left(worker_id=m.worker_id, incarnation=m.incarnation,
                                        reason=m.left_reason or "expired", mark=m.left_at)
        # last_heartbeat is PostgreSQL's now() when it learns of a renewal (the lease's own
        # heartbeat_at is the worker's clock): only the leases renewed since the last sync
        await self.workers.heartbeats([w for w, at in beats.items()
                                       if self._beats.get(w) != at])
        self._beats = beats
        rows = await self.workers.list()
        await self._lost_unseen(rows, {o.worker_id for o in observed})
        drained = [w.id for w in rows if w.drain]
        if drained:
            await aw(self.redis.sadd(self.keys.workers_drained, *drained))
        self._db_dirty = False

    async def _lost_unseen(self, rows: list[WorkerRow], seen: set[str]) -> None:
        """Workers PostgreSQL has up that Redis knows nothing of: Redis lost everything (a
        restart without persistence) while they were gone, so no lease will ever lapse for
        them. Once they have not heartbeaten for a lease's TTL plus a heartbeat period (the
        PostgreSQL record lags the lease by up to one sync), record them down, and the
        reconciler handles their jobs as for any lost worker. One that comes back simply
        joins again (and the reconciler spares workers live in Redis)."""
        unseen = [w.id for w in rows if w.state != WorkerState.DOWN and w.id not in seen]
        if not unseen:
            return
        known, live = await self.membership.ids()  # still unknown now, not just joined
        unseen = [w for w in unseen if w not in known and w not in live]
        lost = await self.workers.lost_unseen(
            unseen, self.settings.worker_ttl_s + self.settings.heartbeat_s)
        for wid in lost:
            ANNOUNCED.labels("worker-left", "lost").inc()
            log.warning("worker %s is gone: PostgreSQL had it up, Redis has no record of it and "
                        "it has not heartbeaten since; recorded down", wid,
                        extra={"event": "worker-lost", "worker_id": wid})

    # --- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self.wakeups.listen(stop), name="registry-wakeups")
        loop = asyncio.get_running_loop()
        next_sync = 0.0
        next_trim = loop.time() + 60
        try:
            while not stop.is_set():
                self.wakeups.take()
                try:
                    await self.sweep()
                    if loop.time() >= next_sync or self._db_dirty:
                        await self.sync_db()
                        next_sync = loop.time() + self.settings.heartbeat_s
                    if loop.time() >= next_trim:
                        await self.bus.trim_all(STREAM_TYPES)
                        next_trim = loop.time() + 60
                except RedisError as e:
                    log.warning("sweep failed, retrying: %s", e, extra={"event": "sweep-failed"})
                except _PG_ERRORS as e:
                    self._db_dirty = True
                    log.warning("PostgreSQL sync failed, retrying: %s", e)
                await self.wakeups.wait(stop, self.settings.registry_sweep_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


async def _main() -> int:
    from shared import runtime, service

    async with service.started("registry", pool_size=4) as ctx:
        registry = Registry(ctx.wiring)
        log.info("registry started", extra={"event": "started",
                                            "sweep_s": ctx.settings.registry_sweep_s})
        await runtime.supervise({"registry": registry.run(ctx.stop)}, ctx.stop)
    return 0

def main() -> int:
    from shared import runtime

    return runtime.run(_main)
