"""enqueue.lua takes a whole page of launches in one call (ArqDispatcher.enqueue): each launch
must land exactly as arq's own enqueue_job would write it, the answers come one per launch and in
order, a repeat of one attempt is refused (within a batch, in a later one, and when the script
itself runs twice), and each worker given a launch gets one wake-up hint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from redis.asyncio import ConnectionPool, Redis

from shared import dispatch
from shared.dispatch import (
    CLOCK_TOLERANCE_MS,
    JOB_EXPIRY_MS,
    LAUNCH,
    ArqDispatcher,
    Dispatch,
    launch_topic,
)
from shared.keys import Keys
from shared.settings import Settings


def launch(worker: str, job: int, attempt: int = 1) -> Dispatch:
    return Dispatch(worker_id=worker, job_id=job, attempt=attempt)


async def state(redis: Redis, keys: Keys, items: list[Dispatch]) -> dict[str, Any]:
    """What the launches left in Redis: queues with scores, job payloads, their TTLs."""
    out: dict[str, Any] = {}
    for w in sorted({i.worker_id for i in items}):
        out[w] = await redis.zrange(keys.arq_queue(w), 0, -1, withscores=True)
    for i in items:
        key = job_key_prefix + keys.arq_job_id(i.job_id, i.attempt)
        ttl = await redis.pttl(key)
        out[key] = (await redis.get(key), ttl > JOB_EXPIRY_MS - 60_000)
    return out


async def test_a_launch_is_what_arq_reads_as_its_own(
        redis: Redis, keys: Keys, settings: Settings) -> None:
    assert await ArqDispatcher(redis, keys).enqueue([launch("w1", 5, 2)]) == [True]
    arq_id = keys.arq_job_id(5, 2)
    pool = ArqRedis(ConnectionPool.from_url(settings.redis_url), job_serializer=orjson.dumps,
                    job_deserializer=orjson.loads)
    try:
        job = Job(arq_id, pool, _queue_name=keys.arq_queue("w1"),
                  _deserializer=orjson.loads)
        assert await job.status() == JobStatus.queued
        info = await job.info()
        assert info is not None
        assert (info.function, list(info.args), info.kwargs, info.job_try) == \
            (LAUNCH, [5, 2], {}, None)
        # due at once by any worker clock up to CLOCK_TOLERANCE_MS behind the scheduler's
        before = time.time() * 1000
        assert info.score is not None
        assert before - CLOCK_TOLERANCE_MS - 5_000 < info.score <= before - CLOCK_TOLERANCE_MS
        # the same job, enqueued by arq itself, is stored byte for byte alike (but for the time)
        mine = orjson.loads(await redis.get(job_key_prefix + arq_id))
        other = await pool.enqueue_job(LAUNCH, 5, 2, _job_id=keys.arq_job_id(6, 1),
                                       _queue_name=keys.arq_queue("w2"))
        assert other is not None
        theirs = orjson.loads(await redis.get(job_key_prefix + keys.arq_job_id(6, 1)))
        assert mine.keys() == theirs.keys()
        assert {k: v for k, v in mine.items() if k != "et"} == \
            {k: v for k, v in theirs.items() if k != "et"}
    finally:
        await pool.aclose(close_connection_pool=True)


async def test_answers_are_per_launch_and_a_repeat_of_an_attempt_is_refused(
        redis: Redis, keys: Keys) -> None:
    d = ArqDispatcher(redis, keys)
    first = [launch("w1", 1), launch("w2", 2), launch("w1", 3), launch("w1", 1),
             launch("w3", 4)]
    assert await d.enqueue(first) == [True, True, True, False, True]
    # a later batch: the old attempts are refused, a new attempt of job 1 is not
    assert await d.enqueue([launch("w1", 3), launch("w2", 1, 2), launch("w3", 4)]) == \
        [False, True, False]
    assert sorted(await d.queued("w1")) == [(1, 1), (3, 1)]
    assert sorted(await d.queued("w2")) == [(1, 2), (2, 1)]
    assert await d.queued("w3") == [(4, 1)]
    assert await d.enqueue([]) == []


async def test_the_script_run_twice_changes_nothing_the_second_time(
        redis: Redis, keys: Keys) -> None:
    """redis-py retries a command on a timeout: the retried call must be a no-op."""
    d = ArqDispatcher(redis, keys)
    items = [launch(f"w{j % 3}", j) for j in range(10)]
    script_keys, args = d._batch(items, int(time.time() * 1000))
    script = d.scripts.script("enqueue")
    assert await script(keys=script_keys, args=args) == [1] * 10
    before = await state(redis, keys, items)
    assert await script(keys=script_keys, args=args) == [0] * 10
    assert await state(redis, keys, items) == before


async def test_a_stored_result_refuses_the_launch(redis: Redis, keys: Keys) -> None:
    """As arq's enqueue_job does: an id with a result is not enqueued again."""
    await redis.set(result_key_prefix + keys.arq_job_id(8, 1), "done")
    d = ArqDispatcher(redis, keys)
    assert await d.enqueue([launch("w1", 7), launch("w1", 8)]) == [True, False]
    assert await d.queued("w1") == [(7, 1)]
    assert not await redis.exists(job_key_prefix + keys.arq_job_id(8, 1))


async def test_batches_split_anywhere_answer_the_same(
        redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "BATCH", 3)
    d = ArqDispatcher(redis, keys)
    items = [launch(f"w{j % 2}", j % 7) for j in range(12)]  # jobs 0-4 come twice
    assert await d.enqueue(items) == [j < 7 for j in range(12)]
    assert sorted(await d.queued("w0")) + sorted(await d.queued("w1")) == \
        [(0, 1), (2, 1), (4, 1), (6, 1), (1, 1), (3, 1), (5, 1)]


async def test_each_worker_given_a_launch_gets_one_hint(redis: Redis, keys: Keys) -> None:
    d = ArqDispatcher(redis, keys)
    channels = {w: keys.wakeup(launch_topic(w)) for w in ("w1", "w2", "w3")}
    async with redis.pubsub(ignore_subscribe_messages=True) as ps:
        await ps.subscribe(*channels.values())

        async def hints() -> list[str]:
            got: list[str] = []
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                m = await ps.get_message(timeout=0.05)
                if m is not None:
                    assert m["data"] == "launch"
                    got.append(m["channel"])
            return sorted(got)

        await asyncio.sleep(0.05)
        await d.enqueue([launch("w1", 1), launch("w1", 2), launch("w2", 3)])
        assert await hints() == sorted([channels["w1"], channels["w2"]])
        # nothing new (repeats only): no hint
        await d.enqueue([launch("w1", 1), launch("w2", 3)])
        assert await hints() == []
