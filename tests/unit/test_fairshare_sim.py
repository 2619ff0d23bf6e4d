"""Fair share converges: a discrete-time simulation of the scheduler's ordering, no servers.

Only the pure parts the scheduler uses are exercised: `shared.priority` (factors, fair_share,
decayed) orders the pending jobs, `shared.placement.plan` places them. Time is simulated in fixed
ticks, so the run is deterministic and takes well under a second. `simulate` is importable by a
bench script.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from shared.placement import Node, Request, plan
from shared.priority import Weights, decayed, factors, fair_share

CPUS = 1  # every simulated job's size


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    cpu_s: dict[str, float]  # CPU-seconds each user received from `measure_from_s` on
    hourly: list[dict[str, float]]  # CPU-seconds each user received in each simulated hour
    usage: dict[str, float]  # decayed usage at the end (ledger + running jobs so far)
    idle_ticks: int  # ticks that ran with a CPU idle while a job was pending


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    id: int
    user: str
    submitted: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Run:
    job: _Job
    worker: str
    started: float


@dataclass(slots=True, kw_only=True)
class _State:
    pending: dict[str, list[_Job]] = field(default_factory=dict)
    next_id: int = 1

    def top_up(self, user: str, now: float, backlog: int) -> None:
        queue = self.pending.setdefault(user, [])
        while len(queue) < backlog:
            queue.append(_Job(id=self.next_id, user=user, submitted=now))
            self.next_id += 1


def simulate(*, shares: Mapping[str, int], arrive_s: Mapping[str, float] | None = None,
             hours: float = 6.0, nodes: int = 4, cpus_per_node: int = 8, job_s: float = 60.0,
             tick_s: float = 5.0, half_life_s: float = 3600.0, backlog: int = 100,
             measure_from_s: float = 0.0, weights: Weights | None = None) -> SimResult:
    """Every user of `shares` has `backlog` 1-CPU jobs of `job_s` seconds pending whenever the
    scheduler runs, from its arrival (default 0) on. Each tick: finished jobs free their CPU and
    add CPU-seconds to the user's ledger; users top their backlog up; usage = ledger + running
    jobs' CPU-seconds so far; pending jobs are ordered by score (highest first, then oldest) and
    handed to `plan`; the ledger decays by one tick."""
    w = weights or Weights()
    arrive = {u: (arrive_s or {}).get(u, 0.0) for u in shares}
    workers = [f"n{i}" for i in range(nodes)]
    busy = dict.fromkeys(workers, 0)
    ledger: dict[str, float] = {}
    running: list[_Run] = []
    state = _State()
    cpu_s = dict.fromkeys(shares, 0.0)
    hourly: list[dict[str, float]] = []
    idle_ticks = 0
    for k in range(round(hours * 3600 / tick_s)):
        now = k * tick_s
        done = [r for r in running if r.started + job_s <= now]
        running = [r for r in running if r.started + job_s > now]
        for r in done:
            busy[r.worker] -= CPUS
            ledger[r.job.user] += CPUS * job_s
        for user in shares:
            if arrive[user] <= now:
                ledger.setdefault(user, 0.0)
                state.top_up(user, now, backlog)
        if sum(busy.values()) < nodes * cpus_per_node:
            usage = dict(ledger)
            for r in running:
                usage[r.job.user] += CPUS * (now - r.started)
            rows = fair_share(usage, shares)
            queue = [j for q in state.pending.values() for j in q]
            score = {j.id: factors(waited_s=now - j.submitted, fairshare=rows[j.user].factor,
                                   priority=0, tier=0, weights=w).score(w) for j in queue}
            queue.sort(key=lambda j: (-score[j.id], j.submitted, j.id))
            p = plan([Request(job_id=j.id, attempt=1, cpus=CPUS, waited_s=now - j.submitted)
                      for j in queue],
                     [Node(id=wid, cpus=cpus_per_node, memory_mb=0, cpus_used=busy[wid])
                      for wid in workers])
            by_id = {j.id: j for j in queue}
            for pl in p.placements:
                j = by_id[pl.job_id]
                running.append(_Run(job=j, worker=pl.worker_id, started=now))
                busy[pl.worker_id] += CPUS
                state.pending[j.user].remove(j)
        pending = sum(len(q) for q in state.pending.values())
        if pending and sum(busy.values()) < nodes * cpus_per_node:
            idle_ticks += 1
        # the tick [now, now + tick_s) runs
        while len(hourly) <= now // 3600:
            hourly.append(dict.fromkeys(shares, 0.0))
        for r in running:
            hourly[-1][r.job.user] += CPUS * tick_s
            if now >= measure_from_s:
                cpu_s[r.job.user] += CPUS * tick_s
        ledger = {u: decayed(x, tick_s, half_life_s) for u, x in ledger.items()}
    end = hours * 3600
    usage = dict(ledger)
    for r in running:
        usage[r.job.user] += CPUS * (end - r.started)
    return SimResult(cpu_s=cpu_s, hourly=hourly, usage=usage, idle_ticks=idle_ticks)


def fractions(x: Mapping[str, float]) -> dict[str, float]:
    total = sum(x.values())
    return {u: v / total for u, v in x.items()}


@pytest.mark.parametrize("shares", [{"A": 1, "B": 1}, {"A": 3, "B": 1}])
def test_each_user_gets_its_share_of_a_full_cluster(shares: dict[str, int]) -> None:
    r = simulate(shares=shares)
    assert r.idle_ticks == 0
    assert sum(r.cpu_s.values()) == 4 * 8 * 6 * 3600  # full from the first tick
    got = fractions(r.cpu_s)
    for user, want in fractions({u: float(s) for u, s in shares.items()}).items():
        assert abs(got[user] - want) <= 0.1 * want, (user, got)
    final = fractions(r.usage)
    for user, want in fractions({u: float(s) for u, s in shares.items()}).items():
        assert abs(final[user] - want) <= 0.1 * want, (user, final)


def test_without_the_fair_share_factor_shares_are_ignored() -> None:
    # the same 3:1 run ordered by age alone: both users' backlogs are served first come first
    # served, so each gets about half; the factor above is what makes the 3:1 split
    r = simulate(shares={"A": 3, "B": 1}, weights=Weights(fairshare=0.0))
    assert r.idle_ticks == 0
    assert abs(fractions(r.cpu_s)["A"] - 0.5) < 0.05


def test_a_late_user_catches_up_then_settles_at_its_share() -> None:
    r = simulate(shares={"A": 1, "B": 1}, arrive_s={"B": 3600.0}, measure_from_s=3600.0)
    assert r.idle_ticks == 0
    # alone for the first hour, A has the whole cluster
    assert r.hourly[0] == {"A": 4 * 8 * 3600.0, "B": 0.0}
    # the hour after B arrives, B gets more than its half: A's usage is far ahead of it
    assert r.hourly[1]["B"] > 0.6 * sum(r.hourly[1].values())
    assert fractions(r.cpu_s)["B"] > 0.5
    # by the end the decayed usages are even again, and so are the last hours
    assert abs(fractions(r.usage)["B"] - 0.5) <= 0.05
    last = {u: r.hourly[-1][u] + r.hourly[-2][u] for u in ("A", "B")}
    assert abs(fractions(last)["B"] - 0.5) <= 0.05


def test_the_simulation_is_deterministic() -> None:
    a = simulate(shares={"A": 3, "B": 1}, hours=1.0)
    b = simulate(shares={"A": 3, "B": 1}, hours=1.0)
    assert a == b
