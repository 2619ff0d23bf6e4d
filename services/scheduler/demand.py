"""The demand signal an autoscaler needs, on every scheduler replica's `/metrics`.

    scns_scheduler_demand_cpus             CPUs the cluster needs now: those of ALLOCATED and
                                           RUNNING jobs, plus those of PENDING jobs that more
                                           capacity would start (reason Priority or Resources)
    scns_scheduler_pending_cpus{reason}    CPUs of PENDING jobs, per reason (0 included)
    scns_scheduler_worker_cpus{pool}       CPUs offered by ready workers, per `pool` worker label
                                           ('' for workers without one)

Held, Dependency, BeginTime and JobArrayTaskLimit jobs wait for something other than capacity,
as do those a partition or a user limit keeps (PartitionTimeLimit, PartitionConfig,
QOSMaxCpuPerUserLimit): more workers would not start them, so they are not demand.

Read from PostgreSQL every `PERIOD_S` by every replica, the standbys included (each reports the
same figures: query them with max()), so the signal does not move when leadership does. The
figures appear once first read, and stay at their last value while PostgreSQL does not
answer: an absent or stale signal makes an autoscaler hold, where a 0 would scale the pool in.
deploy/k8s/components/autoscaling feeds them to KEDA.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shared.db import UNAVAILABLE
from shared.db.queries import q
from shared.states import PendingReason

log = logging.getLogger(__name__)

PERIOD_S = 5.0
WANT_CAPACITY = frozenset({PendingReason.PRIORITY, PendingReason.RESOURCES})


@dataclass(frozen=True, slots=True)
class Demand:
    pending_cpus: Mapping[str, int]  # by reason, every reason present
    busy_cpus: int  # ALLOCATED and RUNNING
    worker_cpus: Mapping[str, int]  # ready workers, by pool label

    @property
    def demand_cpus(self) -> int:
        return self.busy_cpus + sum(self.pending_cpus.get(r, 0) for r in WANT_CAPACITY)

    @classmethod
    def from_rows(cls, rows: Iterable[asyncpg.Record | Mapping[str, object]]) -> Demand:
        pending = dict.fromkeys(map(str, PendingReason), 0)
        busy, workers = 0, {}
        for row in rows:
            kind, label, cpus = str(row["kind"]), str(row["label"]), int(str(row["cpus"] or 0))
            if kind == "pending":
                pending[label] = pending.get(label, 0) + cpus
            elif kind == "busy":
                busy = cpus
            else:
                workers[label] = cpus
        return cls(pending_cpus=pending, busy_cpus=busy, worker_cpus=workers)


class DemandCollector:
    """The last figures read, served to Prometheus (a custom collector: a pool that no longer
    has ready workers disappears instead of lingering)."""

    def __init__(self) -> None:
        self.last: Demand | None = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families(Demand({}, 0, {})))

    def collect(self) -> Iterable[Metric]:
        return [] if self.last is None else list(self._families(self.last))

    @staticmethod
    def _families(d: Demand) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "scns_scheduler_demand_cpus", "CPUs the cluster needs now: ALLOCATED and RUNNING "
            "jobs' plus PENDING jobs' that more capacity would start", value=d.demand_cpus)
        pending = GaugeMetricFamily("scns_scheduler_pending_cpus",
                                    "CPUs asked for by PENDING jobs, by reason",
                                    labels=["reason"])
        for reason in sorted(d.pending_cpus):
            pending.add_metric([reason], d.pending_cpus[reason])
        yield pending
        workers = GaugeMetricFamily("scns_scheduler_worker_cpus",
                                    "CPUs offered by ready workers, by their `pool` label",
                                    labels=["pool"])
        for pool in sorted(d.worker_cpus):
            workers.add_metric([pool], d.worker_cpus[pool])
        yield workers


COLLECTOR = DemandCollector()
REGISTRY.register(COLLECTOR)


async def read(pool: asyncpg.Pool[asyncpg.Record]) -> Demand:
    return Demand.from_rows(await pool.fetch(q("scheduler_demand")))


async def run(pool: asyncpg.Pool[asyncpg.Record], stop: asyncio.Event,
              collector: DemandCollector = COLLECTOR, period_s: float = PERIOD_S) -> None:
    """Refresh `collector` every `period_s` until `stop` is set."""
    while not stop.is_set():
        try:
            collector.last = await read(pool)
        except UNAVAILABLE as e:
            log.debug("demand not refreshed: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
