"""The scheduler: pending jobs in, placements out.

A pass reads the queue by group (a user and the partitions their jobs name): the head of each
group, in the group's own priority-then-submit order, one page at a time, so its cost grows with
the groups and what it places, not with the number of pending jobs. The heads are ordered by
their multifactor score (shared/priority.py: partition tier, the user's fair-share factor, age,
the job's own priority), confined to their eligible partitions' workers and their user's CPU
budget, planned against the ready workers' free capacity (shared.placement: best fit, backfill,
a reservation for a long-starved wide job), and committed the plan in the order ARCHITECTURE.md
fixes: PostgreSQL first (a guarded batch UPDATE to ALLOCATED plus allocation rows), then Redis
(the allocation script, pipelined), then the launch on the worker's arq queue, then
`job-allocated` events. A placement the Redis step refuses (the worker filled up or left since
the snapshot) is rolled back to PENDING. The reconciler repairs whatever gap a crash leaves
between the steps. A page's commit mostly waits (on PostgreSQL, then Redis), so it runs while
the next page is read and planned, as though it succeeds; a refusal gives the refused jobs'
budgets back and makes the pass read the snapshot again before its next page.

Jobs waiting for a begin time are not in the queue a pass reads: each pass first promotes those
whose time has come (an indexed statement, shared/lifecycle) and the loop sleeps no longer than
until the next one, so a job starts within moments of its begin time without any pass scanning
the pending jobs for it.

Cron schedules fire from their own loop in the same process (cron.py), while this replica leads.

Passes run when events arrive (job-submitted, -finished, -requeued, -updated, worker-joined,
worker-left, through a consumer group), on pub/sub wake-up hints, at the next begin time, and
every SCNS_SCHEDULER_INTERVAL_S as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from services.scheduler.cron import CronLoop
from shared.bus import Consumer, Delivery, consumer_name
from shared.db import UNAVAILABLE
from shared.db.jobs import MAX_PRIORITY
from shared.db.partitions import Head, LimitStore, PartitionStore, QueueStore, ShareStore
from shared.events import (
    Event,
    JobFinished,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobUpdated,
    WorkerJoined,
    WorkerLeft,
)
from shared.leader import SCHEDULER_LOCK_ID, Leadership
from shared.lifecycle import Changed, Placed
from shared.partitions import Partition
from shared.placement import Node, Placement, Request, plan
from shared.priority import fair_share
from shared.ranking import Ranking
from shared.states import WorkerState
from shared.wakeup import Wakeups
from shared.wiring import Wiring

log = logging.getLogger(__name__)

PASSES = Histogram("scns_scheduler_pass_seconds", "Duration of one scheduling pass")
PLACED = Counter("scns_scheduler_placed_total", "Jobs placed")
ROLLED_BACK = Counter("scns_scheduler_rolled_back_total",
                      "Placements rolled back because the Redis step found no room")

WAKE_TYPES = (JobSubmitted.TYPE, JobFinished.TYPE, JobRequeued.TYPE, JobUpdated.TYPE,
              WorkerJoined.TYPE, WorkerLeft.TYPE)
# what a dependency `after` waits for: noted for the next pass, no pass of its own
NOTE_TYPES = (JobStarted.TYPE,)
MAX_PAGES = 20
COALESCE_S = 0.025
_PG_ERRORS = UNAVAILABLE


@dataclass(slots=True)
class PassResult:
    considered: int = 0
    placed: int = 0
    rolled_back: int = 0


def _after(nodes: list[Node], placed: list[Placement]) -> list[Node]:
    used: dict[str, tuple[int, int]] = {}
    for x in placed:
        c, m = used.get(x.worker_id, (0, 0))
        used[x.worker_id] = (c + x.cpus, m + x.memory_mb)
    return [n if n.id not in used else
            replace(n, cpus_used=n.cpus_used + used[n.id][0],
                    memory_used_mb=n.memory_used_mb + used[n.id][1])
            for n in nodes]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Where:
    """Where a kind of head may run: its eligible partitions' workers, the budgets it draws
    on and its tier (reason: why it may run nowhere)."""

    reason: str | None
    tier: int
    workers: frozenset[str]
    budgets: tuple[tuple[str, frozenset[str] | None], ...]


def _drop(task: asyncio.Task[Any]) -> None:
    """A read the pass no longer needs (it ended early, or failed): cancelled if still running,
    and its outcome retrieved whenever it ends (an error in it is the pass's no more)."""
    if not task.done():
        task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def partition_key(user: str, partition: str) -> str:
    """The budget of `user`'s running CPUs within `partition` (a user's own is their name)."""
    return f"{user}\x1f{partition}"


@dataclass(slots=True, kw_only=True)
class _Queue:
    """What a pass knows about the queue's policy: partitions and their workers, each user's
    fair-share factor and CPU budgets (overall, and within each partition that limits its
    users). Turns the groups' head jobs into placement requests in score order
    (shared/priority.py)."""

    rank: Ranking
    labels: Mapping[str, Mapping[str, str]]
    budgets: dict[str, int]
    _members: dict[str, frozenset[str]] = field(default_factory=dict)
    _unions: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict)
    _judged: dict[tuple[str, str, int, int | None], _Where] = field(default_factory=dict)
    _spent: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def members(self, p: Partition) -> frozenset[str]:
        got = self._members.get(p.name)
        if got is None:
            got = self._members[p.name] = frozenset(
                w for w, labels in self.labels.items() if p.selects(labels))
        return got

    def limit_partitions(self, users: Sequence[str],
                         held: Sequence[tuple[str, str, str, int]]) -> None:
        """Add each user's budget within each partition with a per-user CPU limit: a job's
        CPUs count against every partition it named that holds its worker."""
        limited = {n: p for n, p in self.rank.partitions.items()
                   if p.max_running_cpus_per_user is not None}
        used: dict[str, int] = {}
        for user, names, worker, cpus in held:
            for name in names.split(","):
                p = limited.get(name)
                if p is not None and worker in self.members(p):
                    k = partition_key(user, name)
                    used[k] = used.get(k, 0) + cpus
        for user in users:
            for name, p in limited.items():
                k = partition_key(user, name)
                self.budgets[k] = max((p.max_running_cpus_per_user or 0) - used.get(k, 0), 0)

    def _budgets(self, user: str, eligible: Sequence[Partition]
                 ) -> tuple[tuple[str, frozenset[str] | None], ...]:
        keys: list[tuple[str, frozenset[str] | None]] = []
        if user in self.budgets:
            keys.append((user, None))
        for p in eligible:
            k = partition_key(user, p.name)
            if k in self.budgets:
                keys.append((k, self.members(p)))
        return tuple(keys)

    def _where(self, user: str, partition: str, cpus: int, limit: int | None) -> _Where:
        """A page's heads share a few (user, partitions, CPUs, time limit): each is judged
        once a pass, and its requests share one worker set (plan() indexes the workers per
        set: one object, not an equal copy per request, keeps that a dictionary hit)."""
        key = (user, partition, cpus, limit)
        got = self._judged.get(key)
        if got is None:
            v = self.rank.verdict(user, partition, cpus, limit)
            names = tuple(p.name for p in v.eligible)
            workers = self._unions.get(names)
            if workers is None:
                workers = self._unions[names] = frozenset().union(
                    *(self.members(p) for p in v.eligible))
            got = self._judged[key] = _Where(
                reason=None if v.eligible else v.reason, tier=v.tier, workers=workers,
                budgets=self._budgets(user, v.eligible))
        return got

    def requests(self, heads: Sequence[Head], reasons: dict[int, str]) -> list[Request]:
        scored: list[tuple[float, int, Request]] = []
        for h in heads:
            w = self._where(h.user, h.partition, h.cpus, h.time_limit_s)
            if w.reason is not None:
                reasons[h.id] = w.reason
                continue
            f = self.rank.factors(user=h.user, waited_s=h.waited_s, priority=h.priority,
                                  tier=w.tier)
            scored.append((-f.score(self.rank.weights), h.id, Request(
                job_id=h.id, attempt=h.attempt, cpus=h.cpus, memory_mb=h.memory_mb,
                waited_s=h.waited_s, workers=w.workers, budgets=w.budgets)))
        scored.sort(key=lambda x: (x[0], x[1]))
        return [r for _, _, r in scored]

    def spend(self, requests: Sequence[Request], placements: Sequence[Placement]
              ) -> dict[int, list[tuple[str, int]]]:
        """Draw the budgets down by what was planned (as plan() did on its own copy), before
        the next page is planned; returns what each job drew, given back if its commit is
        refused."""
        by_id = {r.job_id: r for r in requests}
        drawn: dict[int, list[tuple[str, int]]] = {}
        for x in placements:
            for k, ws in by_id[x.job_id].budgets:
                if k in self.budgets and (ws is None or x.worker_id in ws):
                    left = max(self.budgets[k] - x.cpus, 0)
                    drawn.setdefault(x.job_id, []).append((k, self.budgets[k] - left))
                    self.budgets[k] = left
        return drawn

    def give_back(self, drawn: Sequence[tuple[str, int]]) -> None:
        for k, cpus in drawn:
            self.budgets[k] += cpus

    def next_cursors(self, heads: Sequence[Head], per_group: int
                     ) -> dict[tuple[str, str], tuple[int, int]]:
        """The groups that may hold more (a full page) and whose user may still take CPUs;
        those whose user may not are set aside, for `resume`."""
        count: dict[tuple[str, str], int] = {}
        last: dict[tuple[str, str], Head] = {}
        for h in heads:  # a group's rows come in its order
            g = (h.user, h.partition)
            count[g] = count.get(g, 0) + 1
            last[g] = h
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for g, h in last.items():
            if count[g] >= per_group:
                (out if self.budgets.get(h.user, 1) > 0 else self._spent)[g] = (h.priority, h.id)
        return out

    def resume(self) -> dict[tuple[str, str], tuple[int, int]]:
        """The groups set aside for want of their user's CPUs whose user has some again (a
        refused commit gave them back), where they stopped."""
        back = {g: c for g, c in self._spent.items() if self.budgets.get(g[0], 1) > 0}
        for g in back:
            del self._spent[g]
        return back


class _Placer(Protocol):
    async def place(self, plan: Sequence[tuple[int, int, str]]) -> Placed: ...


class _Commits:
    """The commits of a pass's pages (lifecycle.place: PostgreSQL, Redis, the launch, the
    events), each begun as soon as its page is planned and while the next page is read and
    planned: a commit mostly waits on PostgreSQL, and the pass would otherwise wait with it.
    At most DEPTH are in flight; the next page is planned as though they succeed (the Redis
    step still refuses a worker that has no room). A refusal marks the snapshot stale: the
    pass reads it again before the next page, and the refused jobs' budgets are given back."""

    # A commit's PostgreSQL step is about half its time, its three Redis round trips the rest:
    # with 3 in flight one's Redis steps overlap the others' statements, where with 2 the pass
    # mostly waited for a slot (bench/scheduler.py: ~20,000 -> ~21,500 jobs/s). With the next
    # page's read, 4 of the scheduler's 5 pooled connections.
    DEPTH = 3

    def __init__(self, lifecycle: _Placer, queue: _Queue, result: PassResult) -> None:
        self.lifecycle = lifecycle
        self.queue = queue
        self.result = result
        self.stale = False
        self._running: deque[tuple[asyncio.Task[Placed], dict[int, list[tuple[str, int]]]]] \
            = deque()

    async def start(self, placements: Sequence[Placement],
                    drawn: dict[int, list[tuple[str, int]]]) -> None:
        while len(self._running) >= self.DEPTH:
            await self._finish_one()
        task = asyncio.create_task(self.lifecycle.place(
            [(x.job_id, x.attempt, x.worker_id) for x in placements]))
        self._running.append((task, drawn))

    @property
    def busy(self) -> bool:
        return bool(self._running)

    async def harvest(self) -> None:
        """Take in the commits that have ended (their refusals, their budgets given back)."""
        while self._running and self._running[0][0].done():
            await self._finish_one()

    async def settle(self) -> None:
        """Wait for every commit in flight."""
        while self._running:
            await self._finish_one()

    async def abandon(self) -> None:
        """After an error (or the pass's cancellation): the commits in flight run to their end,
        as a commit awaited in turn would have; their own errors add nothing to the first."""
        if self._running:
            await asyncio.gather(*(t for t, _ in self._running), return_exceptions=True)
            self._running.clear()

    async def _finish_one(self) -> None:
        task, drawn = self._running[0]
        done = await task
        self._running.popleft()
        placed, back = len(done.placed), done.rolled_back
        PLACED.inc(placed)
        ROLLED_BACK.inc(back)
        self.result.placed += placed
        self.result.rolled_back += back
        if back:
            won = {a.job_id for a in done.placed}
            for job_id, d in drawn.items():
                if job_id not in won:
                    self.queue.give_back(d)
            self.stale = True


class Scheduler:
    def __init__(self, wiring: Wiring) -> None:
        self.settings = wiring.settings
        self.membership = wiring.membership
        self.allocator = wiring.allocator
        self.bus = wiring.bus
        self.jobs = wiring.jobs
        self.lifecycle = wiring.lifecycle
        self.queue = QueueStore(wiring.pool)
        self.partition_store = PartitionStore(wiring.pool)
        self.limit_store = LimitStore(wiring.pool)
        self.shares = ShareStore(wiring.pool)
        self.weights = self.settings.weights
        self.factors: dict[str, float] = {}
        self.fair_at = -float("inf")
        self.wakeups = Wakeups(wiring.redis, wiring.keys.wakeup("scheduler"))
        self.next_begin_s: float | None = None  # until the next begin time, as of the last pass
        # what dependencies may wait on, from events; the first pass sweeps every edge
        self.changed = Changed(sweep=True)
        self.last_sweep = time.monotonic()
        self.cron = CronLoop(wiring)

    def wake(self) -> None:
        self.wakeups.set()

    async def nodes(self) -> tuple[list[Node], dict[str, Mapping[str, str]]]:
        """The ready workers' free capacity, and their labels."""
        members = [m for m in await self.membership.live_members()
                   if m.state == WorkerState.READY]
        usage = await self.allocator.usage([m.worker_id for m in members])
        return ([Node(id=m.worker_id, cpus=m.cpus, memory_mb=m.memory_mb,
                      cpus_used=usage[m.worker_id].cpus,
                      memory_used_mb=usage[m.worker_id].memory_mb) for m in members],
                {m.worker_id: m.labels for m in members})

    async def _resolve(self) -> None:
        """Dependencies whose targets changed, then the throttled arrays' next elements."""
        if time.monotonic() - self.last_sweep > self.settings.dependency_sweep_s:
            self.changed.sweep = True
        changed = self.changed.take()
        if changed:
            try:
                await self.lifecycle.resolve_dependencies(changed)
            except BaseException:
                self.changed.merge(changed)  # tried again next pass: nothing is lost
                raise
            if changed.sweep:
                self.last_sweep = time.monotonic()
        await self.lifecycle.admit_array_tasks()

    async def fair_share(self) -> dict[str, float]:
        """Each user's fair-share factor; usage is rolled up and re-read every
        SCNS_FAIRSHARE_REFRESH_S (between, the factors stand)."""
        if time.monotonic() - self.fair_at >= self.settings.fairshare_refresh_s:
            half_life = self.settings.fairshare_half_life_s
            await self.shares.rollup(half_life)
            rows = await self.shares.usage(half_life)
            table = fair_share({u.user: u.cpu_s for u in rows},
                               {u.user: u.shares for u in rows})
            self.factors = {u: r.factor for u, r in table.items()}
            self.fair_at = time.monotonic()
        return self.factors

    async def run_pass(self) -> PassResult:
        result = PassResult()
        with PASSES.time():
            # the workers' capacity (Redis) is read while PostgreSQL settles the queue
            snapshot = asyncio.create_task(self.nodes())
            try:
                await self._resolve()
                self.next_begin_s = await self.lifecycle.promote_due()
                if not await self.allocator.ready():
                    # Redis lost its records; the reconciler rebuilds them from PostgreSQL first
                    log.warning("placement paused: allocation records are being rebuilt",
                                extra={"event": "not-ready"})
                    return result
                fair = await self.fair_share()  # rolled up on its own period, busy or idle
                nodes, labels = await snapshot
            finally:
                _drop(snapshot)
            if not sum(max(n.cpus_free, 0) for n in nodes):
                return result  # every CPU is taken: nothing can be placed, reasons stand
            groups = await self.queue.groups()
            if not groups:
                return result
            rank = Ranking(partitions=await self.partition_store.all(), fair=fair,
                           weights=self.weights)
            queue = _Queue(rank=rank, labels=labels,
                           budgets={u: max(most - held, 0) for u, (most, held)
                                    in (await self.limit_store.cpu_limits()).items()})
            if any(p.max_running_cpus_per_user is not None for p in queue.rank.partitions.values()):
                users = sorted({u for u, _ in groups})
                queue.limit_partitions(users, await self.limit_store.held(users))
            await self._place(queue, nodes, groups, result)
        return result

    async def _place(self, queue: _Queue, nodes: list[Node], groups: list[tuple[str, str]],
                     result: PassResult) -> None:
        """Read the groups' heads page by page, best score first, and place what fits."""
        reasons: dict[int, str] = {}
        cursors = {g: (MAX_PRIORITY, 0) for g in groups}  # before every job
        commits = _Commits(self.lifecycle, queue, result)
        pages = 0
        try:
            while pages < MAX_PAGES:
                await commits.harvest()
                if commits.stale:  # a placement was refused: the snapshot is stale, read it again
                    await commits.settle()
                    nodes = (await self.nodes())[0]
                    commits.stale = False
                    # and its jobs' CPUs went back to their users: groups that stopped for want
                    # of them read on
                    cursors.update(queue.resume())
                if not cursors:
                    if not commits.busy:
                        break
                    await commits.settle()  # a refusal among them would give CPUs back
                    continue
                free = sum(max(n.cpus_free, 0) for n in nodes)
                if free == 0:
                    if not commits.busy:
                        break
                    await commits.settle()  # a refusal among them would leave room after all
                    continue
                pages += 1
                # at most `free` jobs can start; a few more let backfill look past wide ones
                limit = min(self.settings.scheduler_batch, free + 64)
                per_group = min(limit, max(32, -(-limit // len(cursors))))
                heads = await self.queue.heads(
                    [(u, p, prio, last) for (u, p), (prio, last) in cursors.items()], per_group)
                if not heads:
                    cursors = {}
                    continue
                result.considered += len(heads)
                requests = queue.requests(heads, reasons)
                p = plan(requests, nodes, reserve_after_s=self.settings.reserve_after_s,
                         budgets=queue.budgets)
                reasons.update(p.blocked)
                if p.placements:
                    await commits.start(p.placements, queue.spend(requests, p.placements))
                    # account for what is being placed without another round trip
                    nodes = _after(nodes, p.placements)
                cursors = queue.next_cursors(heads, per_group)
            await commits.settle()
        finally:
            await commits.abandon()
        await self.lifecycle.set_reasons(reasons)

    # --- the loop ------------------------------------------------------------------------
    async def on_event(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, JobFinished) and event.next_attempt is None:
            self.changed.ended.add(event.job_id)
        elif isinstance(event, JobStarted):
            self.changed.ended.add(event.job_id)  # an `after` edge waits for the start
            return
        elif isinstance(event, JobSubmitted) and event.dependency:
            self.changed.fresh.add(event.job_id)
        elif isinstance(event, JobUpdated) and event.array and event.change == "cancel":
            self.changed.arrays.add(event.job_id)
        self.wake()

    async def run(self, stop: asyncio.Event, leadership: Leadership) -> None:
        consumer = Consumer(self.bus, group="scheduler", consumer=consumer_name("scheduler"),
                            types=WAKE_TYPES + NOTE_TYPES, handler=self.on_event,
                            claim_idle_ms=self.settings.claim_idle_ms,
                            max_deliveries=self.settings.max_deliveries, block_ms=1000,
                            dedupe=False)  # wake-ups only: a repeat is harmless
        tasks = [asyncio.create_task(self._consume(consumer, stop, leadership),
                                     name="scheduler-events"),
                 asyncio.create_task(self.wakeups.listen(stop), name="scheduler-wakeups"),
                 asyncio.create_task(self.cron.run(stop, leadership), name="scheduler-cron")]
        try:
            await self._loop(stop, leadership)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, stop: asyncio.Event, leadership: Leadership) -> None:
        self.wake()
        last_pass = 0.0
        while not stop.is_set():
            timeout = self.settings.scheduler_interval_s
            if self.next_begin_s is not None:  # a begin time comes sooner than the timer
                timeout = min(timeout, max(self.next_begin_s - (time.monotonic() - last_pass),
                                           0.0))
            await self.wakeups.wait(stop, timeout)
            if stop.is_set():
                return
            # Under load wake-ups arrive per job; gathering them for a few milliseconds makes
            # one pass place a batch instead of one job (idle latency is barely touched).
            since = time.monotonic() - last_pass
            if since < COALESCE_S:
                await asyncio.sleep(COALESCE_S - since)
            last_pass = time.monotonic()
            self.wakeups.take()
            was_leader = leadership.held
            if not await leadership.check():
                continue
            if not was_leader:
                self.changed.sweep = True  # events meant for the previous leader may be lost
            try:
                started = time.monotonic()
                r = await self.run_pass()
                if r.rolled_back or (r.placed and time.monotonic() - started > 0.1):
                    log.info("pass placed %d of %d pending (%d rolled back) in %.1f ms",
                             r.placed, r.considered, r.rolled_back,
                             (time.monotonic() - started) * 1000,
                             extra={"event": "pass", "placed": r.placed})
            except RedisError as e:
                log.warning("pass failed, Redis unavailable: %s", e)
                await asyncio.sleep(0.5)
            except _PG_ERRORS as e:
                log.warning("placement paused, PostgreSQL unavailable: %s", e)
                await asyncio.sleep(0.5)

    async def _consume(self, consumer: Consumer, stop: asyncio.Event,
                       leadership: Leadership) -> None:
        # A standby leaves the events to the active scheduler (what they say about dependencies
        # is acted on only by the one that runs passes); it starts reading once it leads, and
        # its first pass sweeps every waiting dependency.
        while not leadership.held and not stop.is_set():  # noqa: ASYNC110 - polled flag
            await asyncio.sleep(0.2)
        while not stop.is_set():
            try:
                await consumer.run(stop)
            except RedisError as e:
                log.warning("event consumer reconnecting: %s", e)
                await asyncio.sleep(1)


async def _main() -> int:
    from services.scheduler import demand
    from shared import runtime, service

    async def ready(ctx: service.Context) -> dict[str, bool]:
        # a standby replica is ready too: it takes over the moment the leader's lock frees
        return {"redis": (await service.ready_if_reachable(ctx))["redis"]}

    async with service.started("scheduler", pool_size=5, ready=ready) as ctx:
        scheduler = Scheduler(ctx.wiring)
        log.info("scheduler started", extra={"event": "started"})
        async with Leadership(ctx.settings.database_url, lock_id=SCHEDULER_LOCK_ID,
                              name="scheduler",
                              exclusive=ctx.settings.scheduler_exclusive) as leadership:
            await runtime.supervise({"scheduler": scheduler.run(ctx.stop, leadership),
                                     "demand": demand.run(ctx.pool, ctx.stop)}, ctx.stop)
    return 0

def main() -> int:
    from shared import runtime

    return runtime.run(_main)
