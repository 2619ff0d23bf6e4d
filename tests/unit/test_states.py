from __future__ import annotations

import itertools

import pytest

from shared.errors import InvalidTransition
from shared.states import (
    STICKY_REASONS,
    TERMINAL,
    TRANSITIONS,
    JobState,
    Op,
    PendingReason,
    can_transition,
    check_transition,
    sql_list,
    state_for_exit,
)

S = JobState


def test_every_operation_has_a_row() -> None:
    assert set(TRANSITIONS) == set(Op)


def test_terminal_states_have_no_way_out_but_a_new_attempt() -> None:
    for op, t in TRANSITIONS.items():
        if t.sources & TERMINAL:
            assert t.to == frozenset(), op
            assert t.again == {S.PENDING}, op
    for terminal in TERMINAL:
        assert can_transition(terminal, S.PENDING)
        assert not any(can_transition(terminal, other) for other in JobState
                       if other is not S.PENDING)


@pytest.mark.parametrize(("src", "dst"), [
    (S.PENDING, S.ALLOCATED), (S.PENDING, S.CANCELLED), (S.PENDING, S.PENDING),
    (S.ALLOCATED, S.RUNNING), (S.ALLOCATED, S.PENDING), (S.ALLOCATED, S.CANCELLED),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.NODE_FAIL), (S.RUNNING, S.OUT_OF_MEMORY),
    (S.RUNNING, S.PENDING),  # a retry or requeue: a new attempt
    (S.FAILED, S.PENDING), (S.COMPLETED, S.PENDING), (S.CANCELLED, S.PENDING),
])
def test_allowed(src: JobState, dst: JobState) -> None:
    assert can_transition(src, dst)
    check_transition(src, dst)


@pytest.mark.parametrize(("src", "dst"), [
    (S.PENDING, S.RUNNING), (S.PENDING, S.COMPLETED), (S.RUNNING, S.ALLOCATED),
    (S.COMPLETED, S.RUNNING), (S.CANCELLED, S.ALLOCATED), (S.ALLOCATED, S.COMPLETED),
    (S.ALLOCATED, S.ALLOCATED), (S.ALLOCATED, S.NODE_FAIL), (S.COMPLETED, S.FAILED),
])
def test_forbidden(src: JobState, dst: JobState) -> None:
    assert not can_transition(src, dst)
    with pytest.raises(InvalidTransition, match=f"from {src} to {dst}"):
        check_transition(src, dst)


def test_a_job_reaches_running_only_through_allocated_by_start() -> None:
    ops = [op for op, t in TRANSITIONS.items() if S.RUNNING in t.to and S.RUNNING not in t.sources]
    assert ops == [Op.START]
    assert TRANSITIONS[Op.START].sources == {S.ALLOCATED}


def test_only_new_attempts_leave_a_terminal_state_and_only_from_the_right_ops() -> None:
    leaving = {op for op, t in TRANSITIONS.items() if t.again}
    assert leaving == {Op.FINISH, Op.REQUEUE}


def test_can_transition_is_the_union_of_the_operations() -> None:
    for src, dst in itertools.product(JobState, JobState):
        expected = any(src in t.sources and (dst in t.to or dst in t.again)
                       for t in TRANSITIONS.values())
        assert can_transition(src, dst) == expected


@pytest.mark.parametrize(("code", "sig", "state"), [
    (0, None, S.COMPLETED), (1, None, S.FAILED), (3, None, S.FAILED), (None, 9, S.FAILED),
    (0, 15, S.FAILED),
])
def test_state_for_exit(code: int | None, sig: int | None, state: JobState) -> None:
    assert state_for_exit(code, sig) == state


def test_terminal_and_active_flags() -> None:
    assert S.COMPLETED.terminal and not S.RUNNING.terminal
    assert S.RUNNING.active and S.ALLOCATED.active and not S.PENDING.active


def test_sticky_reasons_and_sql_lists() -> None:
    assert PendingReason.HELD in STICKY_REASONS
    assert PendingReason.RESOURCES not in STICKY_REASONS
    assert sql_list(frozenset({S.RUNNING, S.ALLOCATED})) == "('ALLOCATED', 'RUNNING')"
