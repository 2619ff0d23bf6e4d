from __future__ import annotations

import itertools

import pytest

from shared.errors import InvalidTransition
from shared.states import (
    REQUEUE_FROM,
    TERMINAL,
    TRANSITIONS,
    JobState,
    can_transition,
    check_transition,
    sources_for,
    state_for_exit,
)

S = JobState


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


def test_terminal_states_have_no_way_out_but_requeue() -> None:
    for t in TERMINAL:
        assert TRANSITIONS[t] == frozenset()
        assert t in REQUEUE_FROM


@pytest.mark.parametrize(("src", "dst"), [
    (S.PENDING, S.ALLOCATED), (S.PENDING, S.CANCELLED),
    (S.ALLOCATED, S.RUNNING), (S.ALLOCATED, S.PENDING), (S.ALLOCATED, S.NODE_FAIL),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.NODE_FAIL), (S.RUNNING, S.OUT_OF_MEMORY),
])
def test_allowed(src: JobState, dst: JobState) -> None:
    assert can_transition(src, dst)
    check_transition(src, dst)


@pytest.mark.parametrize(("src", "dst"), [
    (S.PENDING, S.RUNNING), (S.PENDING, S.COMPLETED), (S.RUNNING, S.PENDING),
    (S.RUNNING, S.ALLOCATED), (S.COMPLETED, S.RUNNING), (S.CANCELLED, S.PENDING),
    (S.ALLOCATED, S.COMPLETED), (S.ALLOCATED, S.ALLOCATED),
])
def test_forbidden(src: JobState, dst: JobState) -> None:
    assert not can_transition(src, dst)
    with pytest.raises(InvalidTransition, match=f"from {src} to {dst}"):
        check_transition(src, dst)


def test_sources_for_is_the_inverse_of_the_table() -> None:
    for src, dst in itertools.product(JobState, JobState):
        assert (src in sources_for(dst)) == can_transition(src, dst)


def test_no_self_loops() -> None:
    for s in JobState:
        assert not can_transition(s, s)


def test_a_job_reaches_running_only_through_allocated() -> None:
    assert sources_for(S.RUNNING) == {S.ALLOCATED}


@pytest.mark.parametrize(("code", "sig", "state"), [
    (0, None, S.COMPLETED), (1, None, S.FAILED), (3, None, S.FAILED), (None, 9, S.FAILED),
    (0, 15, S.FAILED),
])
def test_state_for_exit(code: int | None, sig: int | None, state: JobState) -> None:
    assert state_for_exit(code, sig) == state


def test_terminal_and_active_flags() -> None:
    assert S.COMPLETED.terminal and not S.RUNNING.terminal
    assert S.RUNNING.active and S.ALLOCATED.active and not S.PENDING.active
