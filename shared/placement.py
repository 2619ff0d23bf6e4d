"""Placement policy: which pending job goes to which worker. Pure; tested without servers.

Jobs are considered in priority-then-submit order. Each goes to the *best-fitting* ready worker
(the one left with the fewest free CPUs, then the least free memory), which packs small jobs
together and keeps whole workers free for wide ones. A job that fits nowhere right now is skipped
with reason `Resources`, and smaller jobs behind it are still placed (simple backfill).

Backfill alone can starve a wide job forever behind a stream of narrow ones, so once the first
blocked job has waited `reserve_after_s`, the worker that can hold it and has the most free CPUs
is reserved for it: no later job is placed there until it starts. Jobs held back only by that
reservation get reason `Priority`, as in Slurm.

A request may be confined to some workers (those of its eligible partitions) and may draw on CPU
budgets (its user's running-CPU limit, overall or within a partition, each over the workers it
covers): where no worker with room keeps them, the request waits with reason
`QOSMaxCpuPerUserLimit` and the user's smaller requests behind it may still be placed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.states import PendingReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    id: str
    cpus: int  # capacity
    memory_mb: int
    cpus_used: int = 0
    memory_used_mb: int = 0

    @property
    def cpus_free(self) -> int:
        return self.cpus - self.cpus_used

    @property
    def memory_free_mb(self) -> int:
        return self.memory_mb - self.memory_used_mb


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    job_id: int
    attempt: int
    cpus: int
    memory_mb: int = 0
    waited_s: float = 0.0
    workers: frozenset[str] | None = None  # the workers of its eligible partitions (None: any)
    # the CPU budgets it draws on (plan's `budgets` keys), each on the workers it applies to
    # (None: on any worker): its user's running-CPU limit, theirs within a partition
    budgets: tuple[tuple[str, frozenset[str] | None], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    job_id: int
    attempt: int
    worker_id: str
    cpus: int
    memory_mb: int


@dataclass(slots=True, kw_only=True)
class Plan:
    placements: list[Placement] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)  # job id -> pending reason
    reserved: dict[str, int] = field(default_factory=dict)  # worker id -> job id


def fits_somewhere(req: Request, nodes: Sequence[Node]) -> bool:
    """Could this request ever run on one of these workers, were they empty?"""
    return any(req.cpus <= n.cpus and req.memory_mb <= n.memory_mb
               and (req.workers is None or n.id in req.workers) for n in nodes)


def _within(req: Request, wid: str, budget: Mapping[str, int]) -> bool:
    """Do the budgets this request draws on, on this worker, hold its CPUs?"""
    return all(budget[k] >= req.cpus for k, ws in req.budgets
               if k in budget and (ws is None or wid in ws))


def plan(
    requests: Sequence[Request], nodes: Sequence[Node], *, reserve_after_s: float | None = None,
    budgets: Mapping[str, int] | None = None,
) -> Plan:
    """`budgets`: the CPUs left under each limit (a user's running CPUs, or theirs within a
    partition); a request is placed only where every budget it draws on holds it (else it
    waits with reason QOSMaxCpuPerUserLimit), and then draws them down."""
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
        if limited:  # room, but not under its user's limits
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
