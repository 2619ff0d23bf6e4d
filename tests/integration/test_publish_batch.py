"""publish.lua adds a whole batch of events in one call (StreamBus.publish_many, the scheduler's
page of job-allocated events): each event must land in its stream, in order, as `publish` would
have written it; the script run twice (a retried command) adds duplicates that a consumer applies
once; and a batch that leaves a stream past its bound trims it, never past what a group still
needs."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared import bus as bus_module
from shared.bus import FIELD_NAME, Consumer, Delivery, StreamBus
from shared.events import Event, JobAllocated, JobStarted, decode
from shared.keys import Keys

A, S = JobAllocated.TYPE, JobStarted.TYPE


def allocated(job: int) -> JobAllocated:
    return JobAllocated(job_id=job, attempt=1, worker_id=f"w{job % 3}", cpus=1, memory_mb=64)


async def entries(redis: Redis, keys: Keys, event_type: str) -> list[tuple[str, Event]]:
    return [(eid, decode(fields[FIELD_NAME]))
            for eid, fields in await redis.xrange(keys.stream(event_type))]


@pytest.mark.parametrize("batch", [1_000, 3])
async def test_a_batch_is_each_event_in_turn(redis: Redis, keys: Keys, batch: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "BATCH", batch)  # calls split anywhere
    bus = StreamBus(redis, keys)
    events: list[Event] = [allocated(j) if j % 4 else JobStarted(job_id=j, attempt=1,
                                                                 worker_id="w1", pid=j)
                           for j in range(10)]
    ids = await bus.publish_many(events)
    got_a, got_s = await entries(redis, keys, A), await entries(redis, keys, S)
    assert [e for _, e in got_a] == [e for e in events if e.TYPE == A]
    assert [e for _, e in got_s] == [e for e in events if e.TYPE == S]
    # the ids answered are the entries', in the events' order
    by_event = {e.event_id: eid for eid, e in got_a + got_s}
    assert ids == [by_event[e.event_id] for e in events]
    # the same entry `publish` writes for one event
    one = allocated(99)
    assert await bus.publish_many([one]) == [(await entries(redis, keys, A))[-1][0]]
    raw = (await redis.xrange(keys.stream(A)))[-1][1]
    assert raw == {FIELD_NAME: one.encode().decode()}
    assert await bus.publish_many([]) == []


async def test_the_script_run_twice_adds_duplicates_applied_once(
        redis: Redis, keys: Keys) -> None:
    """redis-py retries a command on a timeout: a retried batch adds its entries again, as a
    retried XADD would, and a consumer recognises them by their event ids."""
    bus = StreamBus(redis, keys)
    applied: list[int] = []

    async def handler(event: Event, _: Delivery) -> None:
        assert isinstance(event, JobAllocated)
        applied.append(event.job_id)

    consumer = Consumer(bus, group="g", consumer="c1", types=[A], handler=handler,
                        block_ms=10, batch=100)
    await consumer.ensure_groups()
    events = [allocated(j) for j in range(5)]
    script_keys, args = bus._batch(events)
    script = bus.scripts.script("publish")
    for _ in range(2):
        added, lengths = await script(keys=script_keys, args=args)
        assert len(added) == 5
    assert lengths == [10]
    assert await consumer.read_once(block_ms=10) == 10
    assert applied == [0, 1, 2, 3, 4]
    assert (await redis.xpending(keys.stream(A), "g"))["pending"] == 0


async def test_a_batch_trims_its_stream_but_never_past_what_a_group_needs(
        redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys, maxlen=10)
    handled: list[int] = []

    async def handler(event: Event, _: Delivery) -> None:
        assert isinstance(event, JobAllocated)
        handled.append(event.job_id)

    consumer = Consumer(bus, group="g", consumer="c1", types=[A], handler=handler,
                        block_ms=10, batch=20)
    await consumer.ensure_groups()
    await bus.publish_many([allocated(j) for j in range(30)])
    assert await redis.xlen(keys.stream(A)) == 30  # the group has read none of them
    assert await consumer.read_once(block_ms=10) == 20
    await bus.publish_many([allocated(j) for j in range(30, 32)])
    # past maxlen: trimmed, but only what the group acknowledged
    left = [e.job_id for _, e in await entries(redis, keys, A) if isinstance(e, JobAllocated)]
    assert left == list(range(20, 32))
    assert handled == list(range(20))
