"""The lifecycle's pure decisions: retries (with doubling delays), requeue after a node failure,
who may set which priority."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.db.jobs import Job
from shared.errors import NotAllowed
from shared.lifecycle import FollowUp, Role, check_priority, follow_up, retry_delay
from shared.states import JobState

S = JobState


def job(**over: object) -> Job:
    base: dict[str, object] = dict(
        id=1, name="j", user="u", state=S.RUNNING, reason=None, priority=0, script="true",
        cpus=1, memory_mb=None, time_limit_s=None, env={}, submit_dir=None, partition=None,
        requeue=False, dependency=None, attempt=1, worker_id="w", exit_code=None, signal=None,
        cancel_requested=False, submitted_at=datetime.now(UTC), allocated_at=None,
        started_at=None, finished_at=None)
    base.update(over)
    return Job(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("base", "used", "delay"), [
    (0, 0, 0.0), (1, 0, 1.0), (1, 1, 2.0), (1, 2, 4.0), (5, 3, 40.0), (30, 9, 15360.0),
])
def test_retry_delays_double(base: int, used: int, delay: float) -> None:
    assert retry_delay(base, used) == delay


@pytest.mark.parametrize("ended", [S.FAILED, S.TIMEOUT])
def test_a_failed_or_timed_out_attempt_is_retried_while_retries_are_left(ended: S) -> None:
    assert follow_up(job(retries=2, retry_delay_s=3), ended) == FollowUp(delay_s=3.0, retry=True)
    assert follow_up(job(retries=2, retry_delay_s=3, retries_used=1), ended) == \
        FollowUp(delay_s=6.0, retry=True)
    assert follow_up(job(retries=2, retry_delay_s=3, retries_used=2), ended) is None


@pytest.mark.parametrize("ended", [S.COMPLETED, S.CANCELLED, S.OUT_OF_MEMORY])
def test_other_ends_are_not_retried(ended: S) -> None:
    assert follow_up(job(retries=5, retry_delay_s=1), ended) is None


def test_a_node_failure_is_requeued_only_if_the_job_asked() -> None:
    assert follow_up(job(requeue=True), S.NODE_FAIL) == FollowUp(delay_s=0.0, retry=False)
    assert follow_up(job(requeue=False, retries=3), S.NODE_FAIL) is None


def test_retries_come_before_requeue_and_do_not_need_it() -> None:
    assert follow_up(job(requeue=True, retries=1), S.FAILED) == FollowUp(delay_s=0.0, retry=True)


@pytest.mark.parametrize("value", [0, 1, 50, 100])
def test_users_pick_priorities_0_to_100(value: int) -> None:
    check_priority(value, Role.USER)


@pytest.mark.parametrize("value", [-1, 101, 10_000])
def test_outside_0_to_100_only_admins(value: int) -> None:
    with pytest.raises(NotAllowed, match="only an admin"):
        check_priority(value, Role.USER)
    check_priority(value, Role.ADMIN)
