from __future__ import annotations

import random

import pytest

from shared.placement import Node, Request, fits_somewhere, plan


def req(job: int, cpus: int, mem: int = 0, waited: float = 0.0) -> Request:
    return Request(job_id=job, attempt=1, cpus=cpus, memory_mb=mem, waited_s=waited)


def where(p) -> dict[int, str]:  # type: ignore[no-untyped-def]
    return {x.job_id: x.worker_id for x in p.placements}


def test_a_four_cpu_job_needs_four_free_cpus_on_one_worker() -> None:
    nodes = [Node(id="a", cpus=4, memory_mb=100, cpus_used=2),
             Node(id="b", cpus=4, memory_mb=100, cpus_used=2)]
    p = plan([req(1, 4)], nodes)
    assert p.placements == []
    assert p.blocked == {1: "Resources"}


def test_best_fit_packs_small_jobs() -> None:
    nodes = [Node(id="big", cpus=16, memory_mb=10_000), Node(id="small", cpus=4, memory_mb=10_000,
                                                          cpus_used=2)]
    p = plan([req(1, 2), req(2, 16)], nodes)
    assert where(p) == {1: "small", 2: "big"}


def test_backfill_smaller_jobs_pass_a_blocked_wide_one() -> None:
    nodes = [Node(id="a", cpus=8, memory_mb=1000, cpus_used=6)]
    p = plan([req(1, 8), req(2, 1), req(3, 1), req(4, 1)], nodes)
    assert where(p) == {2: "a", 3: "a"}
    assert p.blocked == {1: "Resources", 4: "Resources"}


def test_memory_is_a_constraint_too() -> None:
    nodes = [Node(id="a", cpus=8, memory_mb=1000), Node(id="b", cpus=8, memory_mb=4000)]
    p = plan([req(1, 1, 3000), req(2, 1, 1000), req(3, 1, 1000)], nodes)
    # job 2 fits both; b leaves fewer CPUs free (best fit); job 3 then finds b out of memory
    assert where(p) == {1: "b", 2: "b", 3: "a"}


def test_a_long_waiting_wide_job_reserves_a_worker() -> None:
    nodes = [Node(id="a", cpus=8, memory_mb=1000, cpus_used=6),
             Node(id="b", cpus=8, memory_mb=1000, cpus_used=7)]
    p = plan([req(1, 8, waited=600), req(2, 1), req(3, 1)], nodes, reserve_after_s=300)
    assert p.reserved == {"a": 1}
    # job 2 may only use b; job 3 then fits nowhere but in the reservation
    assert where(p) == {2: "b"}
    assert p.blocked == {1: "Resources", 3: "Priority"}


def test_no_reservation_before_the_wait_threshold() -> None:
    nodes = [Node(id="a", cpus=8, memory_mb=1000, cpus_used=6)]
    p = plan([req(1, 8, waited=10), req(2, 1)], nodes, reserve_after_s=300)
    assert p.reserved == {}
    assert where(p) == {2: "a"}


def test_a_job_no_worker_can_hold_reserves_nothing() -> None:
    nodes = [Node(id="a", cpus=4, memory_mb=1000)]
    p = plan([req(1, 64, waited=1e6), req(2, 1)], nodes, reserve_after_s=1)
    assert p.reserved == {}
    assert where(p) == {2: "a"}


def test_fits_somewhere() -> None:
    nodes = [Node(id="a", cpus=4, memory_mb=100), Node(id="b", cpus=16, memory_mb=10)]
    assert fits_somewhere(req(1, 16, 10), nodes)
    assert not fits_somewhere(req(1, 16, 100), nodes)


@pytest.mark.parametrize("seed", range(20))
def test_random_plans_never_over_commit(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [Node(id=f"w{i}", cpus=rng.choice([4, 16, 96]), memory_mb=rng.choice([1000, 64000]),
                  cpus_used=0) for i in range(rng.randint(1, 6))]
    nodes = [Node(id=n.id, cpus=n.cpus, memory_mb=n.memory_mb,
                  cpus_used=rng.randint(0, n.cpus), memory_used_mb=rng.randint(0, n.memory_mb))
             for n in nodes]
    reqs = [req(j, rng.randint(1, 32), rng.choice([0, 500, 4000]), rng.uniform(0, 1000))
            for j in range(rng.randint(0, 200))]
    p = plan(reqs, nodes, reserve_after_s=rng.choice([None, 100.0]))
    for n in nodes:
        placed = [x for x in p.placements if x.worker_id == n.id]
        assert n.cpus_used + sum(x.cpus for x in placed) <= n.cpus
        assert n.memory_used_mb + sum(x.memory_mb for x in placed) <= n.memory_mb
        if n.id in p.reserved:  # nothing placed there after the reserving job
            order = [r.job_id for r in reqs]
            after = order[order.index(p.reserved[n.id]) + 1:]
            assert not [x for x in placed if x.job_id in after]
    assert {x.job_id for x in p.placements}.isdisjoint(p.blocked)
    assert {x.job_id for x in p.placements} | set(p.blocked) == {r.job_id for r in reqs}


def test_a_request_goes_only_to_its_workers() -> None:
    nodes = [Node(id="a", cpus=4, memory_mb=100), Node(id="b", cpus=2, memory_mb=100)]
    only_a = Request(job_id=1, attempt=1, cpus=2, workers=frozenset({"a"}))
    nowhere = Request(job_id=2, attempt=1, cpus=1, workers=frozenset({"gone"}))
    p = plan([only_a, nowhere], nodes)
    assert where(p) == {1: "a"} and p.blocked == {2: "Resources"}
    assert not fits_somewhere(nowhere, nodes)


def test_a_users_budget_caps_what_is_placed_and_smaller_jobs_fill_it() -> None:
    nodes = [Node(id="a", cpus=16, memory_mb=100)]
    mine = (("ann", None),)
    reqs = [Request(job_id=i, attempt=1, cpus=c, budgets=mine)
            for i, c in ((1, 2), (2, 2), (3, 2), (4, 1))]
    p = plan(reqs, nodes, budgets={"ann": 5})
    assert sorted(where(p)) == [1, 2, 4]  # 2 + 2 + 1 = 5: the third 2-CPU job waits
    assert p.blocked == {3: "QOSMaxCpuPerUserLimit"}
    # a budget nobody set limits nothing
    assert len(plan(reqs, nodes).placements) == 4


def test_a_partition_budget_applies_on_its_workers_only() -> None:
    """ann may run 2 CPUs in partition `arm` (workers a1, a2); `x` is not limited: once her arm
    budget is spent, her jobs that may also run on x go there."""
    nodes = [Node(id="a1", cpus=4, memory_mb=100), Node(id="a2", cpus=4, memory_mb=100),
             Node(id="x", cpus=4, memory_mb=100)]
    arm = frozenset({"a1", "a2"})
    keys = (("ann\x1farm", arm),)
    either = [Request(job_id=i, attempt=1, cpus=1, workers=arm | {"x"}, budgets=keys)
              for i in range(1, 5)]
    arm_only = Request(job_id=9, attempt=1, cpus=1, workers=arm, budgets=keys)
    # best fit would pack all onto one worker; the budget sends the 3rd and 4th to x
    p = plan([*either, arm_only], nodes, budgets={"ann\x1farm": 2})
    placed = where(p)
    assert sum(1 for w in placed.values() if w in arm) == 2
    assert [placed[i] for i in (3, 4)] == ["x", "x"]
    assert p.blocked == {9: "QOSMaxCpuPerUserLimit"}
