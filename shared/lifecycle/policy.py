"""Pure decisions of the job lifecycle: what follows an attempt's end, and who may ask for what.
No I/O; time is not needed (delays are relative to the database's clock, applied in SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.db.jobs import Job
from shared.errors import NotAllowed
from shared.states import JobState

USER_PRIORITY = (0, 100)
MAX_RETRIES = 10
RETRYABLE = frozenset({JobState.FAILED, JobState.TIMEOUT})


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


def check_priority(value: int, role: Role) -> None:
    """Users pick 0-100 (higher runs first); admins any value. The one place that decides."""
    low, high = USER_PRIORITY
    if role is not Role.ADMIN and not low <= value <= high:
        raise NotAllowed(f"priority {value} is outside {low}-{high}; only an admin may set "
                         "a priority outside that range")


def check_nice(nice: int, role: Role) -> None:
    """Anyone may lower their job's priority (sbatch --nice=N); raising it (a negative
    adjustment) is an admin's, as in Slurm."""
    if nice < 0 and role is not Role.ADMIN:
        raise NotAllowed(f"--nice={nice}: only an admin may give a negative adjustment")


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowUp:
    """The job goes on as a new attempt, which may start after `delay_s`."""

    delay_s: float
    retry: bool  # counts against the job's retries


def retry_delay(base_s: float, retries_used: int) -> float:
    """The first retry waits `base_s`, each later one twice as long as the one before."""
    return float(base_s) * float(2 ** retries_used)


def follow_up(job: Job, ended: JobState) -> FollowUp | None:
    """What follows the end of `job`'s current attempt in state `ended`, as far as the job's own
    settings decide: a retry of a FAILED or TIMEOUT attempt while retries are left, or a new
    attempt of a --requeue job whose node failed. (A requeue or cancel asked for while it ran is
    recorded in PostgreSQL and applied by the finishing statement itself.)"""
    if ended in RETRYABLE and job.retries_used < job.retries:
        return FollowUp(delay_s=retry_delay(job.retry_delay_s, job.retries_used), retry=True)
    if ended is JobState.NODE_FAIL and job.requeue:
        return FollowUp(delay_s=0.0, retry=False)
    return None
