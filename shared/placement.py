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

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
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


class _Free:
    """Some workers by free capacity: the best fit for a request (the fewest free CPUs that
    hold it, then the least free memory that does, then the id) is a bisection in each
    free-CPU level from the request's CPUs up, where a scan of every worker was O(W) per
    request. Levels are few (a worker's CPUs bound them), so a lookup is ~O(log W)."""

    __slots__ = ("buckets", "levels")

    def __init__(self, ordered: Iterable[tuple[int, int, str]]) -> None:
        self.levels: list[int] = []  # the free-CPU counts present, ascending
        self.buckets: dict[int, list[tuple[int, str]]] = {}  # each: (free memory, id) ascending
        for c, m, w in ordered:
            b = self.buckets.get(c)
            if b is None:
                b = self.buckets[c] = []
                self.levels.append(c)
            b.append((m, w))

    def best(self, cpus: int, memory_mb: int) -> tuple[int, int, str] | None:
        levels, buckets = self.levels, self.buckets
        for i in range(bisect_left(levels, cpus), len(levels)):
            c = levels[i]
            b = buckets[c]
            j = bisect_left(b, (memory_mb, ""))
            if j < len(b):
                m, w = b[j]
                return c, m, w
        return None

    def remove(self, c: int, m: int, w: str) -> None:
        b = self.buckets[c]
        del b[bisect_left(b, (m, w))]
        if not b:
            del self.buckets[c]
            del self.levels[bisect_left(self.levels, c)]

    def add(self, c: int, m: int, w: str) -> None:
        b = self.buckets.get(c)
        if b is None:
            b = self.buckets[c] = []
            insort(self.levels, c)
        insort(b, (m, w))


# the workers a request may be placed on: its own (None: any), less those where a budget it
# draws on is spent (each the workers that budget covers)
_Scope = tuple[frozenset[str] | None, tuple[frozenset[str], ...]]


class _Workers:
    """The free capacity as a plan spends it, indexed (_Free) once per scope that requests
    look in: requests share a few scopes (their partitions' workers, their users' spent
    budgets), so a placement updates a few indexes, not one per request."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.free: dict[str, list[int]] = {n.id: [n.cpus - n.cpus_used,
                                                  n.memory_mb - n.memory_used_mb] for n in nodes}
        self.reserved: set[str] = set()
        self._indexes: dict[_Scope, _Free] = {}
        self._holding: dict[str, list[_Free]] = {w: [] for w in self.free}

    def index(self, scope: _Scope) -> _Free:
        got = self._indexes.get(scope)
        if got is None:
            allowed, spent = scope
            free, reserved = self.free, self.reserved
            members = [w for w in (free if allowed is None else allowed)
                       if w in free and w not in reserved]
            if spent:
                out = frozenset().union(*spent)
                members = [w for w in members if w not in out]
            ordered = [(free[w][0], free[w][1], w) for w in members]
            ordered.sort()
            got = self._indexes[scope] = _Free(ordered)
            for w in members:
                self._holding[w].append(got)
        return got

    def take(self, w: str, cpus: int, memory_mb: int) -> None:
        f = self.free[w]
        for idx in self._holding[w]:
            idx.remove(f[0], f[1], w)
            idx.add(f[0] - cpus, f[1] - memory_mb, w)
        f[0] -= cpus
        f[1] -= memory_mb

    def reserve(self, w: str) -> None:
        """No later request is placed on `w`: it leaves every index."""
        self.reserved.add(w)
        f = self.free[w]
        for idx in self._holding.pop(w):
            idx.remove(f[0], f[1], w)


def _spent(req: Request, budget: Mapping[str, int]) -> tuple[frozenset[str], ...] | None:
    """The workers of each budget this request draws on that cannot hold its CPUs; None when
    such a budget covers every worker (the request fits under its limits nowhere)."""
    out: list[frozenset[str]] = []
    for k, ws in req.budgets:
        if k in budget and budget[k] < req.cpus:
            if ws is None:
                return None
            out.append(ws)
    return tuple(out)


def plan(
    requests: Sequence[Request], nodes: Sequence[Node], *, reserve_after_s: float | None = None,
    budgets: Mapping[str, int] | None = None,
) -> Plan:
    """`budgets`: the CPUs left under each limit (a user's running CPUs, or theirs within a
    partition); a request is placed only where every budget it draws on holds it (else it
    waits with reason QOSMaxCpuPerUserLimit), and then draws them down."""
    workers = _Workers(nodes)
    free = workers.free
    budget = dict(budgets or {})
    out = Plan()
    no_holders: set[tuple[frozenset[str] | None, int, int]] = set()  # reservations looked for
    for req in requests:
        allowed = req.workers
        spent = _spent(req, budget) if req.budgets else ()
        best = (None if spent is None
                else workers.index((allowed, spent)).best(req.cpus, req.memory_mb))
        if best is not None:
            wid = best[2]
            workers.take(wid, req.cpus, req.memory_mb)
            for k, ws in req.budgets:
                if k in budget and (ws is None or wid in ws):
                    budget[k] -= req.cpus
            out.placements.append(Placement(job_id=req.job_id, attempt=req.attempt,
                                            worker_id=wid, cpus=req.cpus,
                                            memory_mb=req.memory_mb))
            continue
        limited = spent is None or bool(spent)
        if limited and workers.index((allowed, ())).best(req.cpus, req.memory_mb) is not None:
            # room, but not under its user's limits
            out.blocked[req.job_id] = PendingReason.QOS_MAX_CPU_PER_USER
            continue
        blocked_by_reservation = out.reserved and any(
            req.cpus <= free[w][0] and req.memory_mb <= free[w][1]
            and (allowed is None or w in allowed) for w in out.reserved)
        out.blocked[req.job_id] = (PendingReason.PRIORITY if blocked_by_reservation
                                   else PendingReason.RESOURCES)
        looked = (allowed, req.cpus, req.memory_mb)
        if (reserve_after_s is not None and not out.reserved
                and req.waited_s >= reserve_after_s and looked not in no_holders):
            capacity = {n.id: (n.cpus, n.memory_mb) for n in nodes}
            holders = [w for w, (c, m) in capacity.items()
                       if req.cpus <= c and req.memory_mb <= m
                       and (allowed is None or w in allowed)]
            if holders:
                target = max(holders, key=lambda w: (free[w][0], free[w][1], w))
                out.reserved[target] = req.job_id
                workers.reserve(target)
            else:
                no_holders.add(looked)
    return out
