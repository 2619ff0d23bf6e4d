"""The job state machine as pure data: which transitions exist, and what they require.

The SQL layer turns a transition into a guarded UPDATE (`... WHERE state = ANY(<allowed
sources>) AND attempt = <attempt>`), so the database, not the caller's memory, decides whether a
change happens. This module has no I/O and is unit-tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from shared.errors import InvalidTransition


class JobState(StrEnum):
    PENDING = "PENDING"
    ALLOCATED = "ALLOCATED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) an allocation on a worker."""
        return self in (JobState.ALLOCATED, JobState.RUNNING)


class PendingReason(StrEnum):
    PRIORITY = "Priority"
    RESOURCES = "Resources"
    DEPENDENCY = "Dependency"
    HELD = "Held"
    BEGIN_TIME = "BeginTime"


class WorkerState(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"


TERMINAL = frozenset({
    JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT,
    JobState.NODE_FAIL, JobState.OUT_OF_MEMORY,
})

S = JobState

# Source state -> states it may move to without starting a new attempt.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.ALLOCATED, S.CANCELLED}),
    # ALLOCATED -> PENDING: the placement was rolled back (the Lua step found no room) or the
    # executor handed the job back before starting it; the attempt is unchanged because nothing ran.
    S.ALLOCATED: frozenset({S.RUNNING, S.PENDING, S.CANCELLED, S.NODE_FAIL}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL,
                          S.OUT_OF_MEMORY}),
    **{t: frozenset() for t in TERMINAL},
}

# A requeue starts a new attempt: the only way out of a terminal state (and out of RUNNING
# without finishing, e.g. NODE_FAIL with requeue, or an explicit `scns requeue`).
REQUEUE_FROM: frozenset[JobState] = frozenset({S.RUNNING, S.ALLOCATED, *TERMINAL})


def can_transition(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


def sources_for(dst: JobState) -> frozenset[JobState]:
    """Every state from which `dst` is reachable in one step (the guard of the UPDATE)."""
    return frozenset(src for src, dsts in TRANSITIONS.items() if dst in dsts)


def check_transition(src: JobState, dst: JobState) -> None:
    if not can_transition(src, dst):
        raise InvalidTransition(f"a job cannot go from {src} to {dst}")


def state_for_exit(exit_code: int | None, signal: int | None) -> JobState:
    """The terminal state a finished process maps to when nothing else (timeout, cancel,
    out-of-memory) explains its end."""
    if signal is None and exit_code == 0:
        return S.COMPLETED
    return S.FAILED
