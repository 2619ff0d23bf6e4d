"""How a pending job ranks: which of its partitions may run it, and its multifactor score.
Pure. The scheduler orders its queue with this and the gateway's explainer ranks a job with it,
so both say the same thing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.partitions import Partition, Verdict, judge
from shared.priority import DEFAULT_FACTOR, Factors, Weights, factors


@dataclass(frozen=True, slots=True, kw_only=True)
class Ranking:
    partitions: Mapping[str, Partition]
    fair: Mapping[str, float]  # user -> fair-share factor (DEFAULT_FACTOR when absent)
    weights: Weights

    def verdict(self, user: str, partition: str, cpus: int, limit: int | None) -> Verdict:
        """`partition`: the job's list, as stored ("a,b")."""
        return judge(partition.split(","), self.partitions, user=user, cpus=cpus,
                     time_limit_s=limit)

    def factors(self, *, user: str, waited_s: float, priority: int, tier: int) -> Factors:
        return factors(waited_s=waited_s, fairshare=self.fair.get(user, DEFAULT_FACTOR),
                       priority=priority, tier=tier, weights=self.weights)
