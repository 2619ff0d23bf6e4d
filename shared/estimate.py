"""When a pending job is expected to start, from time limits (like Slurm's backfill estimate).

Users ask "when will my job run?"; the honest answer is a simulation, not a guess from queue
length. Every running job holds its worker's CPUs and memory until its time limit runs out (for
ever, if it has none: we cannot know its end). Then each job ahead of the target, in priority
order, and at last the target itself, is booked on a node at the earliest time its CPUs and
memory are free for its whole time limit, best fit among equally early nodes (fewest free CPUs
at that time, then node id), as placement does. A job ahead that can never start (too big for
every node, or blocked by something that never ends) books nothing and is skipped.

The estimate is an upper bound in the usual case: jobs end before their limits, freeing room
sooner. It is no bound at all against jobs submitted later with a higher priority.

Each node's occupancy is a step function of time (sorted segment starts, usage per segment);
booking a job scans one node's segments once, so the whole estimate costs about
len(ahead) * segments. Only the first `MAX_AHEAD` jobs ahead are simulated: past a few thousand
the estimate is days away and worth little, and the cost is bounded for an API call.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from shared.placement import Node

MAX_AHEAD = 5000  # jobs ahead beyond this many are ignored


@dataclass(frozen=True, slots=True, kw_only=True)
class Running:
    worker_id: str
    cpus: int
    memory_mb: int
    ends_in_s: float | None  # None: no time limit, its end is unknown (it holds on for ever)


@dataclass(frozen=True, slots=True, kw_only=True)
class Queued:
    cpus: int
    memory_mb: int
    time_limit_s: float | None  # None: no limit, it holds its room for ever once started
    workers: frozenset[str] | None = None  # the workers it may run on; None: any


@dataclass(slots=True, kw_only=True)
class _Timeline:
    """One node's bookings: segment k runs from times[k] to times[k + 1] (the last one for ever)
    with cpus[k] CPUs and memory[k] MB booked. times[0] is 0 (now)."""

    capacity_cpus: int
    capacity_memory_mb: int
    times: list[float]
    cpus: list[int]
    memory: list[int]

    @classmethod
    def empty(cls, node: Node) -> _Timeline:
        return cls(capacity_cpus=node.cpus, capacity_memory_mb=node.memory_mb, times=[0.0],
                   cpus=[0], memory=[0])

    def earliest(self, cpus: int, memory_mb: int, length: float, not_after: float) -> int | None:
        """The first segment at whose start a job fits for `length` seconds (math.inf: for
        ever), if that start is at most `not_after`; None otherwise."""
        room_c = self.capacity_cpus - cpus
        room_m = self.capacity_memory_mb - memory_mb
        if room_c < 0 or room_m < 0:
            return None
        times, used_c, used_m = self.times, self.cpus, self.memory
        n = len(times)
        i = 0
        while i < n and times[i] <= not_after:
            end = times[i] + length
            j = i
            while used_c[j] <= room_c and used_m[j] <= room_m:
                j += 1
                if j == n or times[j] >= end:
                    return i
            # segment j is too full: any start before it whose window reaches it fails too
            i = j + 1
        return None

    def book(self, start: float, end: float, cpus: int, memory_mb: int) -> None:
        if end <= start:
            return
        i = self._split(start)
        j = self._split(end) if end < math.inf else len(self.times)
        for k in range(i, j):
            self.cpus[k] += cpus
            self.memory[k] += memory_mb
        # only the two outer boundaries can have become redundant; drop them to keep scans short
        self._merge(j)
        self._merge(i)

    def _split(self, t: float) -> int:
        k = bisect_left(self.times, t)
        if k < len(self.times) and self.times[k] == t:
            return k
        self.times.insert(k, t)
        self.cpus.insert(k, self.cpus[k - 1])
        self.memory.insert(k, self.memory[k - 1])
        return k

    def _merge(self, k: int) -> None:
        if 0 < k < len(self.times) and (self.cpus[k], self.memory[k]) == (
                self.cpus[k - 1], self.memory[k - 1]):
            del self.times[k], self.cpus[k], self.memory[k]


def _book(job: Queued, timelines: dict[str, _Timeline], *, commit: bool) -> float | None:
    """Book `job` at its earliest start (best fit among nodes as early); return that start."""
    length = math.inf if job.time_limit_s is None else max(job.time_limit_s, 0.0)
    best: tuple[float, int, str] | None = None
    for wid, line in timelines.items():
        if job.workers is not None and wid not in job.workers:
            continue
        k = line.earliest(job.cpus, job.memory_mb, length,
                          math.inf if best is None else best[0])
        if k is None:
            continue
        key = (line.times[k], line.capacity_cpus - line.cpus[k], wid)
        if best is None or key < best:
            best = key
    if best is None:
        return None
    start = best[0]
    if commit:
        timelines[best[2]].book(start, start + length, job.cpus, job.memory_mb)
    return start


def estimate_start(target: Queued, *, ahead: Sequence[Queued], nodes: Sequence[Node],
                   running: Sequence[Running]) -> float | None:
    """Seconds from now until `target` is expected to start, or None if it never can (no
    allowed node holds it, or what it waits for never ends). `ahead` is in the order the
    scheduler will consider those jobs; only its first MAX_AHEAD are simulated. Node capacity is
    `cpus`/`memory_mb`; what is in use comes from `running` only (a running job on a node not
    listed is ignored; one past its time limit is taken to end now)."""
    timelines = {n.id: _Timeline.empty(n) for n in nodes}
    for r in running:
        line = timelines.get(r.worker_id)
        end = math.inf if r.ends_in_s is None else r.ends_in_s
        if line is not None:
            line.book(0.0, end, r.cpus, r.memory_mb)
    for job in ahead[:MAX_AHEAD]:
        _book(job, timelines, commit=True)
    return _book(target, timelines, commit=False)
