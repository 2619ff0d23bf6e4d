"""The start-up checks' decisions (shared/preflight.py) and the scheduler's demand figures
(services/scheduler/demand.py), as pure logic; tests/integration/test_preflight.py runs the
checks against real servers."""

from __future__ import annotations

from typing import Any

import pytest

from services.scheduler.demand import Demand, DemandCollector
from shared.preflight import redis_problems

GOOD: dict[str, Any] = {"redis_version": "7.0.15", "maxmemory_policy": "noeviction",
                        "cluster_enabled": 0}


def test_a_plain_noeviction_redis_passes() -> None:
    assert redis_problems(GOOD) == []
    assert redis_problems({**GOOD, "redis_version": "6.2.0"}) == []
    assert redis_problems({}) == []  # a managed Redis that hides INFO: not refused


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "volatile-ttl",
                                    "allkeys-random", "volatile-lfu"])
def test_an_evicting_redis_is_refused(policy: str) -> None:
    (problem,) = redis_problems({**GOOD, "maxmemory_policy": policy})
    assert f"maxmemory-policy is {policy}; SCNS needs noeviction" in problem


def test_cluster_mode_and_old_versions_are_refused() -> None:
    (problem,) = redis_problems({**GOOD, "cluster_enabled": 1})
    assert "cluster mode" in problem
    (problem,) = redis_problems({**GOOD, "redis_version": "6.0.16"})
    assert "Redis 6.0.16 is too old" in problem
    assert len(redis_problems({"redis_version": "5.0.7", "maxmemory_policy": "allkeys-lru",
                               "cluster_enabled": "1"})) == 3


def rows(*items: tuple[str, str, int]) -> list[dict[str, object]]:
    return [{"kind": k, "label": label, "cpus": cpus} for k, label, cpus in items]


def test_demand_counts_what_more_capacity_would_start() -> None:
    d = Demand.from_rows(rows(("pending", "Priority", 4), ("pending", "Resources", 64),
                              ("pending", "Held", 100), ("pending", "Dependency", 7),
                              ("busy", "", 30), ("workers", "", 32),
                              ("workers", "autoscaled", 64)))
    assert d.demand_cpus == 30 + 4 + 64
    assert d.pending_cpus["Held"] == 100 and d.pending_cpus["BeginTime"] == 0
    assert dict(d.worker_cpus) == {"": 32, "autoscaled": 64}
    empty = Demand.from_rows(rows(("busy", "", 0)))
    assert empty.demand_cpus == 0 and not empty.worker_cpus


def test_the_collector_serves_nothing_before_its_first_read() -> None:
    c = DemandCollector()
    assert list(c.collect()) == []  # absent, not 0: an autoscaler holds instead of scaling in
    c.last = Demand.from_rows(rows(("pending", "Resources", 8), ("busy", "", 2),
                                   ("workers", "fixed", 16)))
    families = {m.name: m for m in c.collect()}
    assert families["scns_scheduler_demand_cpus"].samples[0].value == 10
    pools = {s.labels["pool"]: s.value for s in families["scns_scheduler_worker_cpus"].samples}
    assert pools == {"fixed": 16}
    reasons = {s.labels["reason"]: s.value
               for s in families["scns_scheduler_pending_cpus"].samples}
    assert reasons["Resources"] == 8 and reasons["Priority"] == 0
