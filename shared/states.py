"""The job state machine as pure data: which operations exist, and what each may do.

Every job write is one named, guarded statement in `shared/db/queries.sql`, tagged with the
operation it implements (`-- transition: finish`). The guard is generated from this table
(`{from:finish}` in the SQL becomes `('RUNNING')`, `{to:finish}` the states it may end in), so
the database, not the caller's memory, decides whether a change happens, and what the SQL allows
is by construction what this table says; tests/unit/test_transitions.py reads queries.sql and
holds the two together. This module has no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    JOB_ARRAY_TASK_LIMIT = "JobArrayTaskLimit"
    # partitions and per-user limits (shared/partitions.py, the scheduler's pass)
    PARTITION_TIME_LIMIT = "PartitionTimeLimit"  # above every named partition's maximum
    PARTITION_CONFIG = "PartitionConfig"  # no named partition exists/admits its user or CPUs
    QOS_MAX_CPU_PER_USER = "QOSMaxCpuPerUserLimit"  # its user holds their max running CPUs


# Reasons the scheduler's pass never overwrites: a person or a condition set them, and only the
# matching operation (release, the begin time passing, the dependency resolving) clears them.
STICKY_REASONS = frozenset({PendingReason.HELD, PendingReason.DEPENDENCY,
                            PendingReason.BEGIN_TIME, PendingReason.JOB_ARRAY_TASK_LIMIT})


class WorkerState(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"


class Op(StrEnum):
    """The operations of the job lifecycle (shared/lifecycle owns each one)."""

    SUBMIT = "submit"
    PLACE = "place"  # the scheduler commits a placement
    HAND_BACK = "hand_back"  # an unstarted placement goes back: no room after all, drain, loss
    START = "start"  # the executor's fence: this worker runs this attempt, once
    FINISH = "finish"  # an attempt ends (exit, limit, cancel, node failure) -> end or retry
    CANCEL = "cancel"  # a job that has not started
    REQUEST_STOP = "request_stop"  # cancel or requeue of a RUNNING job: its executor stops it
    HOLD = "hold"
    RELEASE = "release"
    UPDATE = "update"  # scontrol update of a PENDING job
    REASON = "reason"  # the scheduler's pending reasons; begin times that have come
    REQUEUE = "requeue"  # a finished job starts over as a new attempt


TERMINAL = frozenset({
    JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT,
    JobState.NODE_FAIL, JobState.OUT_OF_MEMORY,
})

S = JobState


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """From which states an operation applies, the states it leaves the job in within the same
    attempt (`to`), and those it reaches by starting a new attempt (`again`)."""

    sources: frozenset[JobState]
    to: frozenset[JobState]
    again: frozenset[JobState] = frozenset()


def _t(sources: set[JobState], to: set[JobState], again: set[JobState] | None = None
       ) -> Transition:
    return Transition(sources=frozenset(sources), to=frozenset(to),
                      again=frozenset(again or ()))


TRANSITIONS: Mapping[Op, Transition] = {
    Op.SUBMIT: _t(set(), {S.PENDING}),
    Op.PLACE: _t({S.PENDING}, {S.ALLOCATED}),
    # nothing ran, so the attempt stays the same
    Op.HAND_BACK: _t({S.ALLOCATED}, {S.PENDING}),
    Op.START: _t({S.ALLOCATED}, {S.RUNNING}),
    # a FAILED or TIMEOUT attempt with retries left, a NODE_FAIL of a --requeue job and an
    # attempt whose user asked for a requeue continue as a new PENDING attempt
    Op.FINISH: _t({S.RUNNING}, set(TERMINAL), {S.PENDING}),
    Op.CANCEL: _t({S.PENDING, S.ALLOCATED}, {S.CANCELLED}),
    Op.REQUEST_STOP: _t({S.RUNNING}, {S.RUNNING}),
    Op.HOLD: _t({S.PENDING}, {S.PENDING}),
    Op.RELEASE: _t({S.PENDING}, {S.PENDING}),
    Op.UPDATE: _t({S.PENDING}, {S.PENDING}),
    Op.REASON: _t({S.PENDING}, {S.PENDING}),
    Op.REQUEUE: _t(set(TERMINAL), set(), {S.PENDING}),
}


def can_transition(src: JobState, dst: JobState) -> bool:
    """Can some operation take a job from `src` to `dst` (in the same or a new attempt)?"""
    return any(src in t.sources and (dst in t.to or dst in t.again)
               for t in TRANSITIONS.values())


def check_transition(src: JobState, dst: JobState) -> None:
    if not can_transition(src, dst):
        raise InvalidTransition(f"a job cannot go from {src} to {dst}")


def state_for_exit(exit_code: int | None, signal: int | None) -> JobState:
    """The terminal state a finished process maps to when nothing else (timeout, cancel,
    out-of-memory) explains its end."""
    if signal is None and exit_code == 0:
        return S.COMPLETED
    return S.FAILED


def sql_list(states: frozenset[JobState]) -> str:
    """`('A', 'B')`: a state set as the SQL the guards are generated into."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"
