"""Fencing: a worker cut off from the cluster stops its jobs before anyone runs them again.

The timeline, counted from the last heartbeat the executor *sent* that Redis answered (its own
monotonic clock, which no wall-clock skew moves; the lease it renewed expires no earlier than
SCNS_WORKER_TTL_S after that):

    0                      the last renewal the executor knows succeeded
    TTL                    the lease may expire; the registry records the departure in
                           PostgreSQL with PostgreSQL's `now()` (never a service's clock)
    TTL + GRACE            the earliest moment the reconciler may declare the worker's jobs
                           NODE_FAIL and start new attempts (`left_at + GRACE < now()`, both
                           PostgreSQL's clock)

    TERM = TTL + GRACE - KILL - CHECK - MARGIN
                           the executor, still without a renewal, SIGTERMs every job (its fence
                           task looks every CHECK seconds)
    TERM + CHECK + KILL    = TTL + GRACE - MARGIN: every job has been SIGKILLed

so the last process of an attempt is dead MARGIN (SCNS_FENCE_MARGIN_S) seconds before another
attempt can be placed. Only durations on one clock are compared: the executor's monotonic
clock for its deadlines, PostgreSQL's for the cluster's, so offsets between the services'
clocks cannot eat the margin; only clock *rates* could, by parts per million.

The settings must keep TERM at or after TTL: an executor must not kill jobs while its lease may
still be valid (a Redis blip shorter than the TTL costs nothing), and a margin that does not fit
is refused at start-up with the arithmetic (`fence_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

CHECK_S = 0.5  # how often the executor's fence task looks at the time since its last renewal


class _Timings(Protocol):
    @property
    def worker_ttl_s(self) -> float: ...
    @property
    def node_fail_grace_s(self) -> float: ...
    @property
    def kill_grace_s(self) -> float: ...
    @property
    def fence_margin_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Fence:
    ttl_s: float
    grace_s: float
    kill_grace_s: float
    margin_s: float

    @classmethod
    def of(cls, s: _Timings) -> Fence:
        return cls(ttl_s=s.worker_ttl_s, grace_s=s.node_fail_grace_s,
                   kill_grace_s=s.kill_grace_s, margin_s=s.fence_margin_s)

    @property
    def lost_after_s(self) -> float:
        """The earliest the cluster may run a job of this worker again, after its last
        renewal."""
        return self.ttl_s + self.grace_s

    @property
    def term_after_s(self) -> float:
        """Without a renewal for this long, the executor SIGTERMs its jobs."""
        return self.lost_after_s - self.kill_grace_s - CHECK_S - self.margin_s

    @property
    def killed_by_s(self) -> float:
        """Every job's last process is SIGKILLed by then (TERM noticed late by up to CHECK)."""
        return self.term_after_s + CHECK_S + self.kill_grace_s

    def problems(self) -> list[str]:
        if self.term_after_s >= self.ttl_s:
            return []
        need = self.kill_grace_s + CHECK_S + self.margin_s
        return [
            f"SCNS_NODE_FAIL_GRACE_S={self.grace_s:g} is too short for SCNS_KILL_GRACE_S="
            f"{self.kill_grace_s:g} and SCNS_FENCE_MARGIN_S={self.margin_s:g}: a worker cut "
            "off from the cluster must SIGKILL its jobs (SIGTERM, then the kill grace, noticed "
            f"within {CHECK_S:g} s) after its lease lapses and still {self.margin_s:g} s before "
            "they may be declared lost and run again, so the grace must be at least "
            f"{need:g} s (kill grace + {CHECK_S:g} + margin); raise SCNS_NODE_FAIL_GRACE_S or "
            "lower SCNS_KILL_GRACE_S / SCNS_FENCE_MARGIN_S (see docs/operations.md, Fencing)"
        ]


def fence_problems(s: _Timings) -> list[str]:
    return Fence.of(s).problems()
