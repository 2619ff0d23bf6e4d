"""The cluster gauges the gateway's `/metrics` serves: the queue, the workers, the streams.

They describe the whole cluster, not this process, so they are read when scraped: one grouped
SQL query (`cluster_gauges`: jobs per state and pending reason, workers' recorded states) and,
from Redis, the workers' membership records and every consumer group's lag and pending entries
(shared/streaminfo.py). Scrapes that come within `MIN_INTERVAL_S` of a refresh, or while one is
in flight, share it: any number of Prometheus replicas cost one refresh a second.

A source that does not answer (Redis or PostgreSQL down, or slower than `TIMEOUT_S`) costs its
own gauges only: they are left out of that scrape (absent, not stale or zero), a warning is
logged and `scns_metrics_refresh_errors_total{source}` counts it; `/metrics` itself still
answers, with every other metric.

    scns_jobs_pending{reason}, scns_jobs_pending_cpus{reason}     (every reason, 0 included)
    scns_jobs_allocated, scns_jobs_running, scns_running_cpus
    scns_workers{state}                                           (ready, draining, down)
    scns_stream_group_lag{stream,group}                           (left out where Redis can't tell)
    scns_stream_group_pending{stream,group}
    scns_stream_group_oldest_pending_seconds{stream,group}        (0 when nothing is pending)
    scns_stream_group_consumers{stream,group}

`stream` is the stream's short name (the event type, or `control:<worker>`), so dashboards do
not depend on the key prefix.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shared.db.queries import q
from shared.states import JobState, PendingReason, WorkerState
from shared.streaminfo import GroupInfo, stream_groups
from shared.wiring import Wiring

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_INTERVAL_S = 1.0
TIMEOUT_S = 3.0  # per source: well inside Prometheus's default 10 s scrape timeout

REFRESH_ERRORS = Counter("scns_metrics_refresh_errors_total",
                         "Refreshes of the cluster gauges a source failed (its gauges were left "
                         "out of that scrape)", ["source"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Jobs:
    pending: Mapping[str, int]  # by reason
    pending_cpus: Mapping[str, int]
    allocated: int
    running: int
    running_cpus: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the last refresh read; None where its source did not answer."""

    jobs: Jobs | None = None
    workers: Mapping[str, int] | None = None  # by state
    groups: list[GroupInfo] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rows:
    jobs: Jobs
    workers: Mapping[str, str]  # id -> state, as PostgreSQL records it


def parse_rows(rows: Iterable[asyncpg.Record]) -> Rows:
    pending = dict.fromkeys(map(str, PendingReason), 0)
    pending_cpus = dict.fromkeys(map(str, PendingReason), 0)
    counts = {JobState.ALLOCATED: 0, JobState.RUNNING: 0}
    running_cpus = 0
    workers: dict[str, str] = {}
    for r in rows:
        state, label = str(r["state"]), str(r["label"])
        n, cpus = int(r["n"]), int(r["cpus"])
        if r["kind"] == "worker":
            workers[label] = state
        elif state == JobState.PENDING:
            pending[label] = pending.get(label, 0) + n
            pending_cpus[label] = pending_cpus.get(label, 0) + cpus
        elif state in counts:
            counts[JobState(state)] += n
            if state == JobState.RUNNING:
                running_cpus += cpus
    return Rows(jobs=Jobs(pending=pending, pending_cpus=pending_cpus,
                          allocated=counts[JobState.ALLOCATED],
                          running=counts[JobState.RUNNING], running_cpus=running_cpus),
                workers=workers)


def count_workers(members: Mapping[str, str], rows: Mapping[str, str] | None) -> dict[str, int]:
    """Workers per state, as GET /workers lists them: every worker with a registry record or a
    PostgreSQL row, in the registry's state if it has a record, else the row's."""
    out = dict.fromkeys(map(str, WorkerState), 0)
    rows = rows or {}
    for wid in set(members) | set(rows):
        state = members.get(wid) or rows.get(wid) or WorkerState.DOWN
        out[state] = out.get(state, 0) + 1
    return out


@dataclass(slots=True, eq=False)  # hashed by identity, as a registry's collectors are
class ClusterGauges:
    """A Prometheus collector serving the last snapshot; `refresh()` renews it (throttled)."""

    min_interval_s: float = MIN_INTERVAL_S
    timeout_s: float = TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    snapshot: Snapshot = field(default_factory=Snapshot)
    refreshes: int = 0  # how many refreshes ran (tests check the throttle with it)
    _owner: Wiring | None = None
    _task: asyncio.Task[None] | None = None
    _at: float = -math.inf

    async def refresh(self, wiring: Wiring) -> None:
        """Renew the snapshot unless a refresh is in flight or began less than
        `min_interval_s` ago; either way, return once the snapshot is that fresh."""
        if self._owner is not wiring:
            # another gateway in this process (tests): nothing read for the last one is ours
            self._owner, self._task, self._at = wiring, None, -math.inf
            self.snapshot = Snapshot()
        if self._task is None and self.clock() - self._at >= self.min_interval_s:
            self._at = self.clock()
            self._task = asyncio.create_task(self._refresh(wiring), name="metrics-refresh")
        if self._task is not None:
            # shielded: a scraper that hangs up does not cancel the others' refresh
            await asyncio.shield(self._task)

    async def _refresh(self, wiring: Wiring) -> None:
        self.refreshes += 1
        try:
            rows, redis = await asyncio.gather(
                self._source("postgresql", self._read_postgresql(wiring)),
                self._source("redis", self._read_redis(wiring)))
        finally:
            if self._owner is wiring:
                self._task = None
        if self._owner is not wiring:
            return
        members, groups = redis if redis is not None else (None, None)
        self.snapshot = Snapshot(
            jobs=rows.jobs if rows is not None else None,
            # the registry's records are the truth about workers; PostgreSQL adds the ones
            # retired from Redis (down), and is done without when it is away (as GET /workers)
            workers=None if members is None else count_workers(
                members, rows.workers if rows is not None else None),
            groups=groups)

    async def _source(self, name: str, read: Awaitable[T]) -> T | None:
        try:
            return await asyncio.wait_for(read, self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # whatever the outage looks like, /metrics still answers
            REFRESH_ERRORS.labels(name).inc()
            log.warning("metrics: %s did not answer (%s); its gauges are left out", name,
                        str(e) or type(e).__name__, extra={"event": "metrics-refresh-failed",
                                                           "source": name})
            return None

    @staticmethod
    async def _read_postgresql(w: Wiring) -> Rows:
        return parse_rows(await w.pool.fetch(q("cluster_gauges")))

    @staticmethod
    async def _read_redis(w: Wiring) -> tuple[dict[str, str], list[GroupInfo]]:
        observed, groups = await asyncio.gather(w.membership.observe(),
                                                stream_groups(w.redis, w.keys))
        members = {o.worker_id: o.member.state for o in observed if o.member is not None}
        return members, groups

    # --- the collector -------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        """Every family's name (the registry refuses a second collector of the same names)."""
        every = Snapshot(jobs=Jobs(pending={}, pending_cpus={}, allocated=0, running=0,
                                   running_cpus=0), workers={}, groups=[])
        return list(self._families(every))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.snapshot))

    @staticmethod
    def _families(s: Snapshot) -> Iterable[Metric]:
        if s.jobs is not None:
            j = s.jobs
            pending = GaugeMetricFamily("scns_jobs_pending", "PENDING jobs, by reason",
                                        labels=["reason"])
            cpus = GaugeMetricFamily("scns_jobs_pending_cpus",
                                     "CPUs asked for by PENDING jobs, by reason",
                                     labels=["reason"])
            for reason in sorted(j.pending):
                pending.add_metric([reason], j.pending[reason])
                cpus.add_metric([reason], j.pending_cpus[reason])
            yield pending
            yield cpus
            yield GaugeMetricFamily("scns_jobs_allocated", "ALLOCATED jobs (placed, not yet "
                                    "started)", value=j.allocated)
            yield GaugeMetricFamily("scns_jobs_running", "RUNNING jobs", value=j.running)
            yield GaugeMetricFamily("scns_running_cpus", "CPUs of RUNNING jobs",
                                    value=j.running_cpus)
        if s.workers is not None:
            workers = GaugeMetricFamily("scns_workers", "Workers, by state", labels=["state"])
            for state in sorted(s.workers):
                workers.add_metric([state], s.workers[state])
            yield workers
        if s.groups is not None:
            labels = ["stream", "group"]
            lag = GaugeMetricFamily("scns_stream_group_lag", "Stream entries not yet delivered "
                                    "to the consumer group", labels=labels)
            pend = GaugeMetricFamily("scns_stream_group_pending", "Stream entries delivered to "
                                     "the consumer group but not acknowledged", labels=labels)
            oldest = GaugeMetricFamily("scns_stream_group_oldest_pending_seconds",
                                       "Age of the consumer group's oldest unacknowledged "
                                       "entry (0: none)", labels=labels)
            consumers = GaugeMetricFamily("scns_stream_group_consumers",
                                          "Consumers in the consumer group", labels=labels)
            for g in s.groups:
                names = [g.name, g.group]
                if g.lag is not None:
                    lag.add_metric(names, g.lag)
                pend.add_metric(names, g.pending)
                oldest.add_metric(names, g.oldest_pending_s or 0.0)
                consumers.add_metric(names, g.consumers)
            yield from (lag, pend, oldest, consumers)


CLUSTER = ClusterGauges()
REGISTRY.register(CLUSTER)


async def refresh(wiring: Wiring) -> None:
    """Bring the cluster gauges up to date for a scrape of this gateway's `/metrics`."""
    await CLUSTER.refresh(wiring)
