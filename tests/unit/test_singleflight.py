"""services/gateway/singleflight.py: askers of one key share the call in flight."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.singleflight import SingleFlight


async def test_concurrent_askers_share_one_call_and_a_later_one_calls_again() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def call() -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await gate.wait()
        return mine

    askers = [asyncio.create_task(flights.do("k", call)) for _ in range(5)]
    other = asyncio.create_task(flights.do("other", call))  # another key: its own call
    for _ in range(3):  # the askers run, then the two calls they started
        await asyncio.sleep(0)
    assert flights.flying("k") and calls == 2
    gate.set()
    assert sorted(await asyncio.gather(*askers)) == [1] * 5 and await other == 2
    assert not flights.flying("k")
    assert await flights.do("k", call) == 3


async def test_an_asker_that_goes_away_leaves_the_call_to_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def call() -> str:
        await gate.wait()
        return "answer"

    first = asyncio.create_task(flights.do("k", call))
    second = asyncio.create_task(flights.do("k", call))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "answer"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failure_reaches_every_asker_and_is_not_kept() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    fail = True

    async def call() -> int:
        await gate.wait()
        if fail:
            raise ConnectionError("database away")
        return 7

    askers = [asyncio.create_task(flights.do("k", call)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*askers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    fail = False
    assert await flights.do("k", call) == 7
