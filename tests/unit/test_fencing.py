"""The fence's arithmetic (shared/fencing.py) and the start-up check that refuses settings
that would leave no margin between an executor's last SIGKILL and a new attempt."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.fencing import CHECK_S, Fence
from shared.settings import Settings


def test_the_last_kill_comes_a_margin_before_the_cluster_may_declare_jobs_lost() -> None:
    f = Fence(ttl_s=60, grace_s=60, kill_grace_s=10, margin_s=5)
    assert f.lost_after_s == 120
    assert f.term_after_s == 120 - 10 - CHECK_S - 5
    assert f.killed_by_s == f.lost_after_s - f.margin_s
    assert f.term_after_s >= f.ttl_s and f.problems() == []


def test_the_defaults_keep_a_positive_margin() -> None:
    s = Settings()
    f = Fence.of(s)
    assert f.margin_s > 0 and f.killed_by_s < f.lost_after_s
    assert f.term_after_s >= s.worker_ttl_s
    assert s.problems() == []


@pytest.mark.parametrize(("env", "need"), [
    # a grace shorter than the kill grace: the cluster reruns jobs still being killed
    ({"SCNS_NODE_FAIL_GRACE_S": "5", "SCNS_KILL_GRACE_S": "10"}, "15.5"),
    # zero grace: no room at all
    ({"SCNS_NODE_FAIL_GRACE_S": "0"}, "15.5"),
    # a margin that does not fit in the grace
    ({"SCNS_NODE_FAIL_GRACE_S": "20", "SCNS_FENCE_MARGIN_S": "30"}, "40.5"),
])
def test_misconfigured_margins_are_refused_with_the_arithmetic(env: dict[str, str],
                                                               need: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env(env)
    text = str(e.value)
    assert "SCNS_NODE_FAIL_GRACE_S" in text and "SIGKILL" in text
    assert f"the grace must be at least {need} s" in text


def test_a_margin_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="SCNS_FENCE_MARGIN_S='0': must be a positive"):
        Settings.from_env({"SCNS_FENCE_MARGIN_S": "0"})


def test_the_clock_skew_setting_is_passed_to_children() -> None:
    s = Settings.from_env({"SCNS_TEST_CLOCK_SKEW_S": "-5"})
    assert s.clock_skew_s == -5.0
    assert s.as_env()["SCNS_TEST_CLOCK_SKEW_S"] == "-5.0"
    assert "SCNS_TEST_CLOCK_SKEW_S" not in Settings().as_env()
    assert Settings.from_env(Settings(fence_margin_s=2.5).as_env()).fence_margin_s == 2.5
