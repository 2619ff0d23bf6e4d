"""plan() indexes the workers by free capacity; this holds it to the straightforward scan it
replaced (kept here as the reference): the same placements in the same order, the same blocked
reasons and the same reservation, over random clusters, worker sets, budgets and waits."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from shared.placement import Node, Placement, Plan, Request, plan
from shared.states import PendingReason


def _within(req: Request, wid: str, budget: Mapping[str, int]) -> bool:
    return all(budget[k] >= req.cpus for k, ws in req.budgets
               if k in budget and (ws is None or wid in ws))


def reference_plan(
    requests: Sequence[Request], nodes: Sequence[Node], *, reserve_after_s: float | None = None,
    budgets: Mapping[str, int] | None = None,
) -> Plan:
    """Each request scans every worker for the best fit: O(requests x workers)."""
    free: dict[str, list[int]] = {n.id: [n.cpus_free, n.memory_free_mb] for n in nodes}
    capacity = {n.id: (n.cpus, n.memory_mb) for n in nodes}
    budget = dict(budgets or {})
    out = Plan()
    for req in requests:
        allowed = req.workers
        best: tuple[int, int, str] | None = None
        limited = False
        for wid, (fc, fm) in free.items():
            if wid in out.reserved or req.cpus > fc or req.memory_mb > fm:
                continue
            if allowed is not None and wid not in allowed:
                continue
            if req.budgets and not _within(req, wid, budget):
                limited = True
                continue
            key = (fc - req.cpus, fm - req.memory_mb, wid)
            if best is None or key < best:
                best = key
        if best is not None:
            wid = best[2]
            free[wid][0] -= req.cpus
            free[wid][1] -= req.memory_mb
            for k, ws in req.budgets:
                if k in budget and (ws is None or wid in ws):
                    budget[k] -= req.cpus
            out.placements.append(Placement(job_id=req.job_id, attempt=req.attempt,
                                            worker_id=wid, cpus=req.cpus,
                                            memory_mb=req.memory_mb))
            continue
        if limited:
            out.blocked[req.job_id] = PendingReason.QOS_MAX_CPU_PER_USER
            continue
        blocked_by_reservation = out.reserved and any(
            req.cpus <= free[w][0] and req.memory_mb <= free[w][1]
            and (allowed is None or w in allowed) for w in out.reserved)
        out.blocked[req.job_id] = (PendingReason.PRIORITY if blocked_by_reservation
                                   else PendingReason.RESOURCES)
        if (reserve_after_s is not None and not out.reserved
                and req.waited_s >= reserve_after_s):
            holders = [w for w, (c, m) in capacity.items()
                       if req.cpus <= c and req.memory_mb <= m
                       and (allowed is None or w in allowed)]
            if holders:
                target = max(holders, key=lambda w: (free[w][0], free[w][1], w))
                out.reserved[target] = req.job_id
    return out


def _subset(rng: random.Random, ids: Sequence[str]) -> frozenset[str]:
    # sometimes empty, sometimes naming workers that are not in the snapshot
    picked = {w for w in ids if rng.random() < rng.choice([0.1, 0.5, 0.9])}
    if rng.random() < 0.2:
        picked.add("gone")
    return frozenset(picked)


def scenario(seed: int) -> tuple[list[Request], list[Node], float | None, dict[str, int] | None]:
    rng = random.Random(seed)
    n_workers = rng.choice([1, 2, 5, 20, 60])
    cpu_sizes = rng.sample([1, 2, 4, 8, 16, 20, 64], k=rng.randint(1, 3))
    mem_sizes = rng.sample([0, 1000, 4000, 64000], k=rng.randint(1, 3))
    nodes = []
    for _ in range(n_workers):  # ids may repeat: the last node of an id stands
        cpus, mem = rng.choice(cpu_sizes), rng.choice(mem_sizes)
        used = rng.choice([0, 0, rng.randint(0, cpus), cpus, cpus + 1])  # over: shrunk worker
        nodes.append(Node(id=f"w{rng.randint(0, 3 * n_workers):03d}", cpus=cpus, memory_mb=mem,
                          cpus_used=used, memory_used_mb=rng.choice([0, rng.randint(0, mem)])))
    ids = [n.id for n in nodes]
    # a few worker sets shared by many requests (partitions), as the scheduler makes them
    sets = [_subset(rng, ids) for _ in range(rng.randint(1, 4))]
    keys: list[tuple[str, frozenset[str] | None]] = [("ann", None), ("bob", None)]
    keys += [(f"ann\x1fp{i}", s) for i, s in enumerate(sets)]
    keys += [(f"bob\x1fp{i}", s) for i, s in enumerate(sets)]
    budgets = None
    if rng.random() < 0.7:
        budgets = {k: rng.choice([0, 1, 3, 10, 50]) for k, _ in keys if rng.random() < 0.6}
    requests = []
    for j in range(rng.choice([0, 1, 10, 100, 300])):
        workers = rng.choice([None, None, *sets, _subset(rng, ids)])
        budget_keys = tuple(k for k in keys if rng.random() < 0.3)
        requests.append(Request(
            job_id=j + 1, attempt=rng.randint(1, 3), cpus=rng.choice([1, 1, 2, 4, 8, 20, 64]),
            memory_mb=rng.choice([0, 0, 500, 2000, 8000, 100_000]),
            waited_s=rng.choice([0.0, 50.0, 100.0, 200.0, 1000.0]), workers=workers,
            budgets=budget_keys))
    return requests, nodes, rng.choice([None, 100.0, 500.0]), budgets


@pytest.mark.parametrize("seed", range(600))
def test_plan_matches_the_reference(seed: int) -> None:
    requests, nodes, reserve_after_s, budgets = scenario(seed)
    got = plan(requests, nodes, reserve_after_s=reserve_after_s, budgets=budgets)
    want = reference_plan(requests, nodes, reserve_after_s=reserve_after_s, budgets=budgets)
    assert got.placements == want.placements
    assert got.blocked == want.blocked
    assert got.reserved == want.reserved


def test_the_scenarios_cover_every_outcome() -> None:
    """The random cases reach every branch the reference has (else the test proves little)."""
    reasons: set[str] = set()
    reserved = placed_under_budget = 0
    for seed in range(600):
        requests, nodes, reserve_after_s, budgets = scenario(seed)
        p = reference_plan(requests, nodes, reserve_after_s=reserve_after_s, budgets=budgets)
        reasons |= set(p.blocked.values())
        reserved += bool(p.reserved)
        by_id = {r.job_id: r for r in requests}
        placed_under_budget += sum(1 for x in p.placements if budgets and by_id[x.job_id].budgets)
    assert reasons == {PendingReason.RESOURCES, PendingReason.PRIORITY,
                       PendingReason.QOS_MAX_CPU_PER_USER}
    assert reserved > 20 and placed_under_budget > 100


def test_a_large_cluster_matches_too() -> None:
    """The bench's shape: many workers, many one-CPU requests, partitions and budgets."""
    rng = random.Random(7)
    nodes = [Node(id=f"w{i:04d}", cpus=20, memory_mb=81920, cpus_used=rng.randint(0, 20))
             for i in range(1000)]
    pools = [frozenset(n.id for i, n in enumerate(nodes) if i % 4 == p) for p in range(4)]
    budgets = {f"u{u}\x1fp{p}": rng.randint(0, 200) for u in range(8) for p in range(4)}
    requests = [Request(job_id=j, attempt=1, cpus=rng.choice([1, 1, 1, 2, 4, 24]),
                        memory_mb=rng.choice([0, 1024]), waited_s=rng.uniform(0, 1000),
                        workers=pools[j % 4], budgets=((f"u{j % 8}\x1fp{j % 4}", pools[j % 4]),))
                for j in range(3000)]
    got = plan(requests, nodes, reserve_after_s=600, budgets=budgets)
    want = reference_plan(requests, nodes, reserve_after_s=600, budgets=budgets)
    assert got.placements == want.placements
    assert got.blocked == want.blocked and got.reserved == want.reserved
