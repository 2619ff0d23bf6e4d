"""The launch transport on a real Redis: claim.lua, and the arq worker woken by hints.

Each intake here polls its queue only once a minute: a launch that arrives within seconds was
woken by the dispatcher's hint (or, for launches that waited for room, by the end of one that
ran), never by the poll.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from shared.dispatch import ArqDispatcher, ArqIntake, Dispatch, launch_topic
from shared.keys import Keys
from shared.lua import source
from shared.settings import Settings

SLOW_POLL_S = 60.0


async def _claim(redis: Redis, keys: Keys, worker: str, ids: list[str]) -> list[str]:
    script = redis.register_script(source("claim"))
    out: list[Any] = await script(
        keys=[keys.arq_queue(worker), *(in_progress_key_prefix + i for i in ids)],
        args=[70_000, int(time.time() * 1000), *ids])
    return [str(x) for x in out[0::2]]


async def test_claim_takes_due_launches_once(redis: Redis, keys: Keys) -> None:
    d = ArqDispatcher(redis, keys)
    items = [Dispatch(worker_id="w1", job_id=j, attempt=1) for j in (1, 2, 3, 4)]
    assert await d.enqueue(items) == [True] * 4
    ids = [keys.arq_job_id(j, 1) for j in (1, 2, 3, 4)]
    # one not due yet (a deferred retry), one another worker process already runs
    await redis.zadd(keys.arq_queue("w1"), {ids[2]: int(time.time() * 1000) + 600_000})
    await redis.set(in_progress_key_prefix + ids[3], "1")

    assert await _claim(redis, keys, "w1", ids) == [ids[0], ids[1]]
    assert await redis.pttl(in_progress_key_prefix + ids[0]) > 60_000
    # safe to run twice: what is claimed stays claimed by the first run
    assert await _claim(redis, keys, "w1", ids) == []
    # an id no longer on the queue (finished, withdrawn) is not claimed
    assert await _claim(redis, keys, "w1", [keys.arq_job_id(99, 1)]) == []


async def _intake(settings: Settings, keys: Keys, worker: str, launched: list[tuple[int, int]],
                  *, max_jobs: int, hold_s: float = 0.0) -> tuple[ArqIntake, asyncio.Task[None]]:
    async def launch(job_id: int, attempt: int) -> None:
        launched.append((job_id, attempt))
        if hold_s:
            await asyncio.sleep(hold_s)

    intake = ArqIntake(settings.redis_url, keys, worker, launch, max_jobs=max_jobs,
                       poll_delay_s=SLOW_POLL_S)
    task = asyncio.create_task(intake.run())
    return intake, task


async def _subscribed(redis: Redis, channel: str) -> None:
    """Until the intake listens for hints (its first poll is done by then or moments after;
    either way the launches below are not found by a poll before the next minute)."""
    for _ in range(500):
        subs = await redis.pubsub_numsub(channel)
        if subs and subs[0][1] >= 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the intake never subscribed to its hints")


async def _until(predicate: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def test_a_hint_wakes_the_intake_long_before_its_poll(
        redis: Redis, keys: Keys, settings: Settings) -> None:
    launched: list[tuple[int, int]] = []
    intake, task = await _intake(settings, keys, "w1", launched, max_jobs=8)
    try:
        await _subscribed(redis, keys.wakeup(launch_topic("w1")))
        await asyncio.sleep(0.2)  # past the first poll
        await ArqDispatcher(redis, keys).enqueue([Dispatch(worker_id="w1", job_id=7, attempt=2)])
        await _until(lambda: launched, within_s=SLOW_POLL_S / 4)
        assert launched == [(7, 2)]
    finally:
        await intake.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_more_launches_than_room_all_start_exactly_once(
        redis: Redis, keys: Keys, settings: Settings) -> None:
    """200 launches for a worker taking 4 at a time: each one that ends makes room for the
    next (a wake-up of its own: the poll is a minute away), and none is started twice."""
    launched: list[tuple[int, int]] = []
    intake, task = await _intake(settings, keys, "w1", launched, max_jobs=4, hold_s=0.01)
    try:
        await _subscribed(redis, keys.wakeup(launch_topic("w1")))
        await asyncio.sleep(0.2)
        d = ArqDispatcher(redis, keys)
        for first in range(0, 200, 50):  # in batches, as scheduling passes send them
            await d.enqueue([Dispatch(worker_id="w1", job_id=j, attempt=1)
                             for j in range(first, first + 50)])
        await _until(lambda: len(launched) >= 200, within_s=SLOW_POLL_S / 2)
        await asyncio.sleep(0.3)  # a duplicate would show up now
        counts = Counter(launched)
        assert len(counts) == 200 and set(counts.values()) == {1}
        assert await redis.zcard(keys.arq_queue("w1")) == 0
    finally:
        await intake.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
