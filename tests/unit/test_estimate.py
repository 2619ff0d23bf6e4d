from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from shared.estimate import MAX_AHEAD, Queued, Running, _Timeline, estimate_start
from shared.placement import Node


def node(wid: str, cpus: int, mem: int = 10_000) -> Node:
    return Node(id=wid, cpus=cpus, memory_mb=mem)


def job(cpus: int, limit: float | None, mem: int = 0,
        workers: frozenset[str] | None = None) -> Queued:
    return Queued(cpus=cpus, memory_mb=mem, time_limit_s=limit, workers=workers)


def run(wid: str, cpus: int, ends: float | None, mem: int = 0) -> Running:
    return Running(worker_id=wid, cpus=cpus, memory_mb=mem, ends_in_s=ends)


def test_the_worked_example_starts_at_30_s() -> None:
    # one node of 2 CPUs, busy until 10 s (one CPU) and 20 s (the other). Ahead, 1 CPU x 10 s:
    # #1 takes [10, 20) on the CPU freed at 10; #2 and #3 take [20, 30) on both; #4 [30, 40).
    # The target takes the CPU left free from 30 s.
    nodes = [node("a", 2)]
    running = [run("a", 1, 10.0), run("a", 1, 20.0)]
    ahead = [job(1, 10.0) for _ in range(4)]
    assert estimate_start(job(1, 10.0), ahead=ahead, nodes=nodes, running=running) == 30.0
    # a target needing the whole node waits for #4 too
    assert estimate_start(job(2, 10.0), ahead=ahead, nodes=nodes, running=running) == 40.0
    # nothing ahead: the first CPU to come free
    assert estimate_start(job(1, 10.0), ahead=[], nodes=nodes, running=running) == 10.0


def test_an_idle_cluster_starts_now() -> None:
    assert estimate_start(job(4, 60.0), ahead=[], nodes=[node("a", 4)], running=[]) == 0.0
    assert estimate_start(job(4, None), ahead=[], nodes=[node("a", 4)], running=[]) == 0.0


def test_a_job_no_node_can_hold_never_starts() -> None:
    nodes = [node("a", 8, mem=1000), node("b", 4, mem=4000)]
    assert estimate_start(job(16, 60.0), ahead=[], nodes=nodes, running=[]) is None
    # enough CPUs on a, enough memory on b, both on neither
    assert estimate_start(job(8, 60.0, mem=2000), ahead=[], nodes=nodes, running=[]) is None
    assert estimate_start(job(1, 60.0), ahead=[], nodes=[], running=[]) is None


def test_a_running_job_without_an_end_blocks_for_ever() -> None:
    nodes = [node("a", 4)]
    running = [run("a", 3, None)]
    assert estimate_start(job(2, 60.0), ahead=[], nodes=nodes, running=running) is None
    # but a job that fits beside it starts now
    assert estimate_start(job(1, 60.0), ahead=[], nodes=nodes, running=running) == 0.0


def test_a_job_ahead_without_a_time_limit_holds_its_room_for_ever() -> None:
    nodes = [node("a", 4)]
    running = [run("a", 4, 30.0)]
    ahead = [job(3, None)]
    assert estimate_start(job(2, 10.0), ahead=ahead, nodes=nodes, running=running) is None
    assert estimate_start(job(1, 10.0), ahead=ahead, nodes=nodes, running=running) == 30.0


def test_a_job_ahead_that_can_never_start_is_skipped() -> None:
    nodes = [node("a", 4)]
    ahead = [job(8, 10.0), job(1, 10.0, workers=frozenset({"gone"}))]
    assert estimate_start(job(4, 10.0), ahead=ahead, nodes=nodes, running=[]) == 0.0
    blocked = [run("a", 2, None)]
    assert estimate_start(job(2, 10.0), ahead=[job(3, 10.0)], nodes=nodes,
                          running=blocked) == 0.0


def test_the_workers_a_job_may_use_are_honoured() -> None:
    nodes = [node("a", 4), node("b", 4)]
    running = [run("b", 4, 50.0)]
    assert estimate_start(job(4, 10.0), ahead=[], nodes=nodes, running=running) == 0.0
    only_b = frozenset({"b"})
    assert estimate_start(job(4, 10.0, workers=only_b), ahead=[], nodes=nodes,
                          running=running) == 50.0
    # a job ahead restricted to a does not hold back one that may only use b, and vice versa
    ahead = [job(4, 100.0, workers=frozenset({"a"}))]
    assert estimate_start(job(4, 10.0, workers=only_b), ahead=ahead, nodes=nodes,
                          running=running) == 50.0
    assert estimate_start(job(4, 10.0, workers=frozenset({"a"})), ahead=ahead, nodes=nodes,
                          running=running) == 100.0
    assert estimate_start(job(1, 10.0, workers=frozenset({"c"})), ahead=[], nodes=nodes,
                          running=[]) is None


def test_a_narrow_job_backfills_before_a_wide_one_only_if_it_ends_in_time() -> None:
    # 4 CPUs, 2 busy until 100 s. The wide job ahead needs all 4: it starts at 100 s and runs
    # to 200 s. Two CPUs are free until then.
    nodes = [node("a", 4)]
    running = [run("a", 2, 100.0)]
    ahead = [job(4, 100.0)]

    def start(target: Queued) -> float | None:
        return estimate_start(target, ahead=ahead, nodes=nodes, running=running)

    assert start(job(2, 50.0)) == 0.0  # ends at 50, long before the wide one starts
    assert start(job(2, 100.0)) == 0.0  # ends exactly when the wide one starts
    assert start(job(2, 100.5)) == 200.0  # would overlap it: waits until it ends
    assert start(job(2, None)) == 200.0
    assert start(job(3, 50.0)) == 200.0  # does not fit in the gap at all
    # without the wide job ahead, the long narrow job would have started now
    assert estimate_start(job(2, 100.5), ahead=[], nodes=nodes, running=running) == 0.0


def test_the_gap_before_a_reserved_start_is_used_by_jobs_ahead_first() -> None:
    nodes = [node("a", 4)]
    running = [run("a", 2, 100.0)]
    ahead = [job(4, 100.0), job(2, 60.0)]  # the second backfills [0, 60)
    assert estimate_start(job(2, 30.0), ahead=ahead, nodes=nodes, running=running) == 60.0
    assert estimate_start(job(2, 50.0), ahead=ahead, nodes=nodes, running=running) == 200.0


def test_memory_is_respected() -> None:
    nodes = [node("a", 8, mem=1000)]
    running = [run("a", 1, 40.0, mem=900)]
    assert estimate_start(job(1, 10.0, mem=100), ahead=[], nodes=nodes, running=running) == 0.0
    assert estimate_start(job(1, 10.0, mem=200), ahead=[], nodes=nodes, running=running) == 40.0
    # memory booked by a job ahead holds the target back though CPUs are free
    ahead = [job(1, 25.0, mem=100)]
    assert estimate_start(job(1, 10.0, mem=100), ahead=ahead, nodes=nodes,
                          running=running) == 25.0


def test_best_fit_keeps_the_big_node_free_for_a_wide_job() -> None:
    nodes = [node("a", 8), node("b", 4)]
    ahead = [job(4, 100.0)]  # fits both now; best fit puts it on b (4 free < 8 free)
    assert estimate_start(job(8, 10.0), ahead=ahead, nodes=nodes, running=[]) == 0.0
    # equally early and equally free: node id decides, a then b
    twins = [node("b", 4), node("a", 4)]
    assert estimate_start(job(4, 10.0, workers=frozenset({"a"})), ahead=ahead, nodes=twins,
                          running=[]) == 100.0
    assert estimate_start(job(4, 10.0, workers=frozenset({"b"})), ahead=ahead, nodes=twins,
                          running=[]) == 0.0


def test_the_earliest_node_wins_over_a_better_fit() -> None:
    nodes = [node("a", 8), node("b", 2)]
    running = [run("b", 2, 30.0)]
    ahead = [job(2, 100.0)]  # a at 0 (free now) rather than b at 30
    assert estimate_start(job(2, 10.0, workers=frozenset({"b"})), ahead=ahead, nodes=nodes,
                          running=running) == 30.0
    assert estimate_start(job(8, 10.0), ahead=ahead, nodes=nodes, running=running) == 100.0


def test_running_jobs_past_their_limit_or_on_unknown_workers() -> None:
    nodes = [node("a", 2)]
    overdue = [run("a", 2, 0.0), run("a", 2, -30.0), run("elsewhere", 64, 1000.0)]
    assert estimate_start(job(2, 10.0), ahead=[], nodes=nodes, running=overdue) == 0.0


def test_only_the_first_max_ahead_jobs_count() -> None:
    nodes = [node("a", 1)]
    ahead = [job(1, 1.0) for _ in range(MAX_AHEAD + 100)]
    assert MAX_AHEAD == 5000
    assert estimate_start(job(1, 1.0), ahead=ahead, nodes=nodes, running=[]) == 5000.0


class _CountedReads(list[int]):
    """A list that counts how many of its items are read (the usage a timeline scan looks at)."""

    def __init__(self, items: list[int]) -> None:
        super().__init__(items)
        self.reads = 0

    def __getitem__(self, index: Any) -> Any:
        self.reads += 1
        return super().__getitem__(index)


def test_thousands_of_jobs_ahead_on_many_nodes_cost_bounded_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of an estimate is counted, not timed: each job simulated (at most MAX_AHEAD
    ahead, then the target) checks each node once, a check reads each of the node's segments at
    most once, and a node never has more segments than bookings plus one (a booking starts at a
    boundary already there, so it adds at most its end): about len(ahead) * segments in all."""
    rng = random.Random(12)
    nodes = [node(f"w{i:02d}", 32, mem=128_000) for i in range(64)]
    running = [run(f"w{rng.randrange(64):02d}", rng.choice([1, 2, 4, 8]),
                   rng.uniform(1, 7200), mem=rng.choice([1000, 4000])) for _ in range(400)]
    # 1000 more than are simulated: they must cost nothing at all
    ahead = [job(rng.choice([1, 1, 2, 4, 8, 16, 32]), rng.choice([60.0, 600.0, 3600.0, 86400.0]),
                 mem=rng.choice([500, 2000, 8000])) for _ in range(MAX_AHEAD + 1000)]

    earliest, book = _Timeline.earliest, _Timeline.book
    work: Counter[str] = Counter()
    booked: Counter[int] = Counter()  # bookings per timeline (by id)

    def counted_earliest(line: _Timeline, cpus: int, memory_mb: int, length: float,
                         not_after: float) -> int | None:
        work["checks"] += 1  # one job against one node
        work["segments"] += len(line.times)  # what this check may read
        work["overgrown"] += len(line.times) > 1 + booked[id(line)]
        if work["checks"] % 50:
            return earliest(line, cpus, memory_mb, length, not_after)
        # every 50th check (the same ones on every run): count the usage it really reads
        usage = line.cpus
        line.cpus = spy = _CountedReads(usage)
        try:
            return earliest(line, cpus, memory_mb, length, not_after)
        finally:
            line.cpus = usage
            work["sampled"] += 1
            work["reread"] += max(0, spy.reads - len(line.times))  # a segment read twice

    def counted_book(line: _Timeline, start: float, end: float, cpus: int,
                     memory_mb: int) -> None:
        work["bookings"] += 1
        booked[id(line)] += 1
        book(line, start, end, cpus, memory_mb)

    monkeypatch.setattr(_Timeline, "earliest", counted_earliest)
    monkeypatch.setattr(_Timeline, "book", counted_book)
    got = estimate_start(job(32, 3600.0), ahead=ahead, nodes=nodes, running=running)
    assert got is not None and got > 0

    simulated = MAX_AHEAD + 1  # the jobs ahead that count, then the target
    assert 0 < work["bookings"] <= len(running) + MAX_AHEAD  # each job booked once at most
    assert work["checks"] <= simulated * len(nodes)
    assert work["sampled"] == work["checks"] // 50 > 1000 and work["reread"] == 0
    assert work["overgrown"] == 0
    assert work["segments"] <= simulated * (len(nodes) + work["bookings"])


def _reference(target: Queued, ahead: list[Queued], nodes: list[Node],
               running: list[Running]) -> float | None:
    """The contract, written as plainly as possible: bookings as (start, end, cpus, mem) per
    node, candidate starts 0 and every end, usage checked at every point where it may rise."""
    inf = float("inf")
    booked: dict[str, list[tuple[float, float, int, int]]] = {n.id: [] for n in nodes}
    cap = {n.id: (n.cpus, n.memory_mb) for n in nodes}
    for r in running:
        if r.worker_id in booked:
            booked[r.worker_id].append((0.0, inf if r.ends_in_s is None else r.ends_in_s,
                                        r.cpus, r.memory_mb))

    def used(wid: str, p: float) -> tuple[int, int]:
        on = [b for b in booked[wid] if b[0] <= p < b[1]]
        return sum(b[2] for b in on), sum(b[3] for b in on)

    def place(q: Queued, commit: bool) -> float | None:
        length = inf if q.time_limit_s is None else q.time_limit_s
        best: tuple[float, int, str] | None = None
        for wid, (c, m) in cap.items():
            if q.workers is not None and wid not in q.workers:
                continue
            for t in sorted({0.0} | {b[1] for b in booked[wid] if 0 < b[1] < inf}):
                points = {t} | {b[0] for b in booked[wid] if t < b[0] < t + length}
                if all(used(wid, p)[0] + q.cpus <= c and used(wid, p)[1] + q.memory_mb <= m
                       for p in points):
                    key = (t, c - used(wid, t)[0], wid)
                    best = key if best is None or key < best else best
                    break
        if best is not None and commit:
            booked[best[2]].append((best[0], best[0] + length, q.cpus, q.memory_mb))
        return None if best is None else best[0]

    for q in ahead:
        place(q, True)
    return place(target, False)


def test_agrees_with_a_plain_reference_simulation() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        nodes = [node(w, rng.choice([2, 4, 8]), mem=rng.choice([1000, 2000]))
                 for w in rng.sample(["a", "b", "c", "d"], rng.randint(1, 4))]
        ids = [n.id for n in nodes] + ["x"]

        def some_workers(ids: list[str] = ids) -> frozenset[str] | None:
            return rng.choice([None, None, frozenset(rng.sample(ids, rng.randint(1, 2)))])

        running = [run(rng.choice(ids), rng.randint(1, 4),
                       rng.choice([None, *range(-5, 60, 5)]), mem=rng.choice([0, 300, 900]))
                   for _ in range(rng.randint(0, 6))]
        ahead = [job(rng.randint(1, 8), rng.choice([None, *range(5, 60, 5)]),
                     mem=rng.choice([0, 200, 700]), workers=some_workers())
                 for _ in range(rng.randint(0, 10))]
        target = job(rng.randint(1, 8), rng.choice([None, *range(5, 60, 5)]),
                     mem=rng.choice([0, 200, 700]), workers=some_workers())
        assert estimate_start(target, ahead=ahead, nodes=nodes, running=running) == _reference(
            target, ahead, nodes, running)
