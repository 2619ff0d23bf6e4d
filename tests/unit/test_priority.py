from __future__ import annotations

import math

import pytest

from shared.priority import (
    DEFAULT_FACTOR,
    Factors,
    ShareRow,
    Weights,
    decayed,
    factors,
    fair_share,
)


def test_default_weights_and_their_json() -> None:
    w = Weights()
    assert w.as_json() == {"age": 1000.0, "fairshare": 10000.0, "job": 10.0,
                           "tier": 100000.0, "max_age_s": 604800.0}
    assert DEFAULT_FACTOR == 1.0


def test_score_is_the_weighted_sum() -> None:
    f = Factors(age=0.5, fairshare=0.25, job=3, tier=2)
    assert f.score(Weights()) == 100000.0 * 2 + 10000.0 * 0.25 + 1000.0 * 0.5 + 10.0 * 3
    assert f.score(Weights()) == 203030.0
    w = Weights(age=1.0, fairshare=2.0, job=4.0, tier=8.0)
    assert f.score(w) == 8.0 * 2 + 2.0 * 0.25 + 1.0 * 0.5 + 4.0 * 3 == 29.0
    assert f.as_json() == {"age": 0.5, "fairshare": 0.25, "job": 3, "tier": 2}


def test_a_higher_tier_beats_any_fair_share_and_age() -> None:
    w = Weights()
    low = factors(waited_s=1e9, fairshare=1.0, priority=0, tier=0, weights=w)
    high = factors(waited_s=0, fairshare=0.0, priority=0, tier=1, weights=w)
    assert high.score(w) > low.score(w)


def test_age_is_waiting_over_max_age_and_caps_at_one() -> None:
    w = Weights(max_age_s=1000.0)
    assert factors(waited_s=250.0, fairshare=0.5, priority=7, tier=1, weights=w) == Factors(
        age=0.25, fairshare=0.5, job=7, tier=1)
    assert factors(waited_s=1000.0, fairshare=0.5, priority=0, tier=0, weights=w).age == 1.0
    assert factors(waited_s=5000.0, fairshare=0.5, priority=0, tier=0, weights=w).age == 1.0
    assert factors(waited_s=-5.0, fairshare=0.5, priority=0, tier=0, weights=w).age == 0.0
    # default: a week
    assert factors(waited_s=86400.0, fairshare=0.5, priority=0, tier=0,
                   weights=Weights()).age == 1 / 7


def test_age_with_no_max_age_is_full_and_fair_share_is_held_to_0_1() -> None:
    assert factors(waited_s=0.0, fairshare=0.5, priority=0, tier=0,
                   weights=Weights(max_age_s=0.0)).age == 1.0
    w = Weights()
    assert factors(waited_s=0, fairshare=1.5, priority=0, tier=0, weights=w).fairshare == 1.0
    assert factors(waited_s=0, fairshare=-0.5, priority=0, tier=0, weights=w).fairshare == 0.0


def test_decay_halves_every_half_life() -> None:
    assert decayed(1000.0, 3600.0, 3600.0) == 500.0
    assert decayed(1000.0, 7200.0, 3600.0) == 250.0
    assert decayed(1000.0, 1800.0, 3600.0) == pytest.approx(1000.0 / math.sqrt(2))
    assert decayed(1000.0, 0.0, 3600.0) == 1000.0
    assert decayed(1000.0, -10.0, 3600.0) == 1000.0
    assert decayed(1000.0, 10.0, 0.0) == 0.0


def test_decay_in_steps_equals_decay_at_once() -> None:
    u = 1234.5
    for _ in range(12):
        u = decayed(u, 300.0, 3600.0)
    assert u == pytest.approx(1234.5 / 2)


def test_fair_share_two_users_equal_shares() -> None:
    rows = fair_share({"a": 300.0, "b": 100.0}, {"a": 1, "b": 1})
    assert rows == {
        "a": ShareRow(user="a", usage_cpu_s=300.0, shares=1, share=0.5, usage_share=0.75,
                      factor=2 ** -1.5),
        "b": ShareRow(user="b", usage_cpu_s=100.0, shares=1, share=0.5, usage_share=0.25,
                      factor=2 ** -0.5),
    }


def test_fair_share_a_user_at_exactly_their_share_gets_one_half() -> None:
    rows = fair_share({"a": 300.0, "b": 100.0}, {"a": 3})  # b: default 1 share
    assert rows["a"].shares == 3 and rows["b"].shares == 1
    assert rows["a"].share == 0.75 and rows["b"].share == 0.25
    assert rows["a"].factor == 0.5 and rows["b"].factor == 0.5


def test_fair_share_defaults_and_edges() -> None:
    # nobody has usage: every factor is 1, the default
    rows = fair_share({"a": 0.0, "b": 0.0})
    assert {u: (r.share, r.usage_share, r.factor) for u, r in rows.items()} == {
        "a": (0.5, 0.0, DEFAULT_FACTOR), "b": (0.5, 0.0, DEFAULT_FACTOR)}
    # negative usage counts as none
    rows = fair_share({"a": -50.0, "b": 100.0})
    assert rows["a"].usage_cpu_s == 0.0 and rows["a"].factor == 1.0
    assert rows["b"].usage_share == 1.0 and rows["b"].factor == 2 ** -2
    # only the users listed in usage count towards the share sum
    rows = fair_share({"a": 10.0}, {"a": 2, "ghost": 98})
    assert rows["a"].share == 1.0 and rows["a"].usage_share == 1.0 and rows["a"].factor == 0.5
    # shares below 1 count as 1
    assert fair_share({"a": 1.0, "b": 1.0}, {"a": 0})["a"].share == 0.5
    assert fair_share({}) == {}


def test_the_user_with_less_usage_per_share_ranks_first() -> None:
    rows = fair_share({"a": 600.0, "b": 400.0}, {"a": 3, "b": 1})
    w = Weights()
    fa = factors(waited_s=0, fairshare=rows["a"].factor, priority=0, tier=0, weights=w)
    fb = factors(waited_s=0, fairshare=rows["b"].factor, priority=0, tier=0, weights=w)
    assert fa.score(w) > fb.score(w)  # a used 0.6 < its 0.75; b used 0.4 > its 0.25
    assert rows["a"].factor == 2 ** -(0.6 / 0.75)
    assert rows["b"].factor == 2 ** -(0.4 / 0.25)
