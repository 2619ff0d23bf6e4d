"""Multifactor priority and fair share: the order the scheduler considers pending jobs in.

First-come-first-served lets one user who submits ten thousand jobs hold the whole cluster for
days. As in Slurm's priority/multifactor plugin, a pending job's score is a weighted sum of
factors instead:

    score = w.tier * tier + w.fairshare * fairshare + w.age * age + w.job * priority

The partition tier dominates (a higher tier always goes first), then fair share, so a user who
has used less than their share of the cluster recently goes ahead of one who has used more; age
(waiting time, reaching 1 after `max_age_s`) keeps old jobs from starving; the job's own priority
only breaks near-ties. Usage is CPU-seconds, decayed with a half-life so that last month's burst
is forgiven. A user's fair-share factor is 2 ** -(usage_share / share): 1 with no usage, 0.5 at
exactly their share, towards 0 beyond it. Pure; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_FACTOR = 1.0  # the fair-share factor of a user with no usage row yet


@dataclass(frozen=True, slots=True, kw_only=True)
class Weights:
    age: float = 1000.0
    fairshare: float = 10000.0
    job: float = 10.0  # per unit of a job's own priority
    tier: float = 100000.0  # per unit of its partition's tier
    max_age_s: float = 7 * 86400.0  # the age factor reaches 1 here

    def as_json(self) -> dict[str, float]:
        return {"age": self.age, "fairshare": self.fairshare, "job": self.job,
                "tier": self.tier, "max_age_s": self.max_age_s}


@dataclass(frozen=True, slots=True, kw_only=True)
class Factors:
    age: float  # 0..1
    fairshare: float  # 0..1
    job: int  # the job's own priority
    tier: int  # its partition's tier

    def score(self, w: Weights) -> float:
        return (w.tier * self.tier + w.fairshare * self.fairshare + w.age * self.age
                + w.job * self.job)

    def as_json(self) -> dict[str, float | int]:
        return {"age": self.age, "fairshare": self.fairshare, "job": self.job, "tier": self.tier}


def factors(*, waited_s: float, fairshare: float, priority: int, tier: int,
            weights: Weights) -> Factors:
    """The factors of one pending job. Age is `waited_s / max_age_s` held to 0..1 (a
    non-positive `max_age_s` makes every job fully aged); fair share is held to 0..1 too."""
    age = 1.0 if weights.max_age_s <= 0 else min(max(waited_s, 0.0) / weights.max_age_s, 1.0)
    return Factors(age=age, fairshare=min(max(fairshare, 0.0), 1.0), job=priority, tier=tier)


def decayed(usage_cpu_s: float, elapsed_s: float, half_life_s: float) -> float:
    """Usage after `elapsed_s` more seconds of exponential decay; halves every `half_life_s`.
    Unchanged for a non-positive elapsed time; a non-positive half-life forgets everything."""
    if elapsed_s <= 0:
        return usage_cpu_s
    if half_life_s <= 0:
        return 0.0
    return usage_cpu_s * math.pow(0.5, elapsed_s / half_life_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareRow:
    user: str
    usage_cpu_s: float  # decayed usage, negative held to 0
    shares: int
    share: float  # shares / sum of the shares of every user listed
    usage_share: float  # usage / all users' usage (0 when nobody has any)
    factor: float  # 2 ** -(usage_share / share)


def fair_share(usage: Mapping[str, float],
               shares: Mapping[str, int] | None = None) -> dict[str, ShareRow]:
    """One row per user of `usage`. A user missing from `shares` has 1 share; shares below 1
    (which the API refuses) count as 1, so no share is ever zero. Negative usage counts as 0."""
    shares = shares or {}
    used = {u: max(x, 0.0) for u, x in usage.items()}
    owned = {u: max(shares.get(u, 1), 1) for u in used}
    total_usage = sum(used.values())
    total_shares = sum(owned.values())
    rows: dict[str, ShareRow] = {}
    for user, u in used.items():
        share = owned[user] / total_shares
        usage_share = u / total_usage if total_usage > 0 else 0.0
        rows[user] = ShareRow(user=user, usage_cpu_s=u, shares=owned[user], share=share,
                              usage_share=usage_share, factor=math.pow(2.0, -(usage_share / share)))
    return rows
