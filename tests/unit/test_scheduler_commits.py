"""A pass commits each page while it reads and plans the next (services/scheduler/service.py
_Commits): what a commit refuses is given back to the user's budgets and marks the snapshot
stale, at most DEPTH commits are in flight, and an error waits for the others to end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.scheduler.service import PassResult, _Commits, _Queue
from shared.db.partitions import Head
from shared.lifecycle import Placed
from shared.lifecycle.store import Allocated
from shared.placement import Placement, Request
from shared.priority import Weights
from shared.ranking import Ranking


class FakeLifecycle:
    """place() refuses the jobs in `refuse`; each call waits for its gate when one is set."""

    def __init__(self, refuse: set[int] = frozenset(), gates: list[asyncio.Event] | None = None,
                 fail: set[int] = frozenset()) -> None:
        self.refuse, self.gates, self.fail = refuse, gates, fail
        self.calls: list[list[int]] = []
        self.in_flight = self.most_in_flight = 0

    async def place(self, plan: Sequence[tuple[int, int, str]]) -> Placed:
        n = len(self.calls)
        self.calls.append([j for j, _, _ in plan])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gates is not None:
                await self.gates[n].wait()
            if n in self.fail:
                raise ConnectionError("PostgreSQL went away")
            return Placed(placed=[Allocated(job_id=j, attempt=a, worker_id=w, cpus=1, memory_mb=0)
                                  for j, a, w in plan if j not in self.refuse],
                          rolled_back=sum(1 for j, _, _ in plan if j in self.refuse))
        finally:
            self.in_flight -= 1


def queue(budgets: dict[str, int]) -> _Queue:
    return _Queue(rank=Ranking(partitions={}, fair={}, weights=Weights()), labels={},
                  budgets=budgets)


def page(q: _Queue, jobs: Sequence[int], worker: str = "w"
         ) -> tuple[list[Placement], dict[int, list[tuple[str, int]]]]:
    requests = [Request(job_id=j, attempt=1, cpus=2, budgets=(("ann", None),)) for j in jobs]
    placements = [Placement(job_id=j, attempt=1, worker_id=worker, cpus=2, memory_mb=0)
                  for j in jobs]
    return placements, q.spend(requests, placements)


async def test_a_refused_placement_gives_its_budget_back_and_marks_the_snapshot_stale() -> None:
    q, result = queue({"ann": 10}), PassResult()
    commits = _Commits(FakeLifecycle(refuse={2}), q, result)
    await commits.start(*page(q, [1, 2]))
    assert q.budgets["ann"] == 6  # drawn as planned, before the commit's outcome is known
    await commits.start(*page(q, [3]))
    assert q.budgets["ann"] == 4
    await commits.settle()
    assert q.budgets["ann"] == 6  # job 2's two CPUs are back
    assert commits.stale
    assert (result.placed, result.rolled_back) == (2, 1)


async def test_what_a_budget_could_not_hold_is_not_given_back() -> None:
    """A budget drawn below zero stops at zero; giving back returns what was drawn."""
    q = queue({"ann": 3})
    commits = _Commits(FakeLifecycle(refuse={1, 2}), q, PassResult())
    await commits.start(*page(q, [1, 2]))  # 2 + 2 against 3: the second draws 1
    assert q.budgets["ann"] == 0
    await commits.settle()
    assert q.budgets["ann"] == 3


async def test_harvest_takes_in_only_what_has_ended() -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    q = queue({"ann": 10})
    commits = _Commits(FakeLifecycle(refuse={1, 2}, gates=gates), q, PassResult())
    await commits.start(*page(q, [1]))
    await commits.start(*page(q, [2]))
    gates[1].set()  # the second ends first: it waits behind the first, in order
    await asyncio.sleep(0)
    await commits.harvest()
    assert q.budgets["ann"] == 6 and not commits.stale
    gates[0].set()
    await asyncio.sleep(0)
    await commits.harvest()
    assert q.budgets["ann"] == 10 and commits.stale


async def test_at_most_depth_commits_are_in_flight() -> None:
    depth = _Commits.DEPTH
    gates = [asyncio.Event() for _ in range(depth + 3)]
    fake = FakeLifecycle(gates=gates)
    commits = _Commits(fake, queue({}), PassResult())
    for j in range(depth):
        await commits.start(*page(commits.queue, [j]))
    next_one = asyncio.create_task(commits.start(*page(commits.queue, [depth])))
    await asyncio.sleep(0.01)
    assert not next_one.done() and len(fake.calls) == depth  # waits for the first to end
    gates[0].set()
    await next_one
    for g in gates:
        g.set()
    await commits.settle()
    assert fake.most_in_flight == depth
    assert fake.calls == [[j] for j in range(depth + 1)]


async def test_an_error_waits_for_the_other_commits_then_stands() -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    fake = FakeLifecycle(gates=gates, fail={0})
    result = PassResult()
    commits = _Commits(fake, queue({}), result)
    await commits.start(*page(commits.queue, [1]))
    await commits.start(*page(commits.queue, [2]))
    gates[0].set()
    with pytest.raises(ConnectionError):
        await commits.settle()
    second = asyncio.create_task(commits.abandon())
    await asyncio.sleep(0.01)
    assert not second.done()  # the second commit is not cut short
    gates[1].set()
    await second
    assert fake.in_flight == 0 and result.placed == 0


def head(job: int, user: str) -> Head:
    return Head(id=job, attempt=1, cpus=2, memory_mb=0, priority=0, reason=None, user=user,
                partition="", time_limit_s=None, waited_s=0.0)


def test_a_group_stopped_for_want_of_cpus_reads_on_when_a_refusal_gives_them_back() -> None:
    """Commits in flight may still be refused after a user's budget ran out: the pass must not
    end their groups for good (it would leave the CPUs given back unused until the next one)."""
    q = queue({"ann": 4})
    pages = [head(1, "ann"), head(2, "ann"), head(3, "bob"), head(4, "bob")]
    _, drawn = page(q, [1, 2])  # ann's 4 CPUs, in a commit still in flight
    assert q.next_cursors(pages, per_group=2) == {("bob", ""): (0, 4)}
    assert q.resume() == {}  # nothing given back yet
    q.give_back(drawn[2])  # the commit refused job 2
    assert q.resume() == {("ann", ""): (0, 2)}
    assert q.resume() == {}  # once
