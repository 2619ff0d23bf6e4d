"""shared/batching.py: calls made together become one call, and each caller gets its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None, unavailable: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.unavailable = unavailable
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.unavailable:
            raise ConnectionResetError("PostgreSQL went away")
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [f"answer {i}" for i in items]


async def test_calls_of_one_moment_are_one_batch_and_each_gets_its_answer() -> None:
    r = Recorder()
    b = Batcher(r.run)
    answers = await asyncio.gather(*(b(i) for i in range(10)))
    assert answers == [f"answer {i}" for i in range(10)]
    assert r.batches == [list(range(10))]


async def test_calls_arriving_during_a_write_make_the_next_batch() -> None:
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.run)
    first = asyncio.gather(*(b(i) for i in range(3)))
    await asyncio.sleep(0.01)  # the first batch is being written
    second = asyncio.gather(*(b(i) for i in range(3, 8)))
    await asyncio.sleep(0.01)
    r.gate.set()
    assert await first == ["answer 0", "answer 1", "answer 2"]
    assert await second == [f"answer {i}" for i in range(3, 8)]
    assert r.batches == [[0, 1, 2], [3, 4, 5, 6, 7]]


async def test_batches_are_capped() -> None:
    r = Recorder()
    b = Batcher(r.run, max_size=4)
    await asyncio.gather(*(b(i) for i in range(10)))
    assert [len(x) for x in r.batches] == [4, 4, 2]


async def test_postgres_away_fails_every_caller_of_the_batch() -> None:
    b = Batcher(Recorder(unavailable=True).run)
    results = await asyncio.gather(*(b(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(x, ConnectionResetError) for x in results)


async def test_one_bad_item_fails_alone() -> None:
    r = Recorder(fail_on=2)
    b = Batcher(r.run)
    results = await asyncio.gather(*(b(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == ["answer 0", "answer 1"] and results[3] == "answer 3"
    assert isinstance(results[2], ValueError)
    assert r.batches[0] == [0, 1, 2, 3] and [0] in r.batches and [3] in r.batches


async def test_a_cancelled_caller_does_not_stop_the_batch() -> None:
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.run)
    gone = asyncio.create_task(b(1))
    stays = asyncio.create_task(b(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    r.gate.set()
    assert await stays == "answer 2"
    assert r.batches == [[1, 2]]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_stopped_writer_leaves_nobody_waiting() -> None:
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.run)
    waiting = [asyncio.create_task(b(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert b._writer is not None
    b._writer.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(x, asyncio.CancelledError) for x in results)
