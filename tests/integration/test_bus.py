"""The stream bus against a real Redis: redelivery, dedup, dead-letter, safe trimming."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.bus import Consumer, Delivery, StreamBus
from shared.events import FIELD, Event, JobSubmitted
from shared.keys import Keys
from tests.helpers import wait_for
from tests.infra import Infra

T = JobSubmitted.TYPE


def make_consumer(bus: StreamBus, handler, name: str = "c1", **kw) -> Consumer:  # type: ignore[no-untyped-def]
    return Consumer(bus, group="g", consumer=name, types=[T], handler=handler,
                    claim_idle_ms=kw.pop("claim_idle_ms", 100),
                    max_deliveries=kw.pop("max_deliveries", 3), block_ms=50, **kw)


async def test_a_handler_that_crashes_sees_the_event_again(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys)
    seen: list[tuple[int, int]] = []

    async def flaky(event: Event, d: Delivery) -> None:
        assert isinstance(event, JobSubmitted)
        seen.append((event.job_id, d.deliveries))
        if d.deliveries == 1:
            raise RuntimeError("crash mid-event")

    c = make_consumer(bus, flaky)
    await c.ensure_groups()
    await bus.publish(JobSubmitted(job_id=1, cpus=1))
    assert await c.read_once() == 1
    assert c.failed == 1
    assert (await redis.xpending(keys.stream(T), "g"))["pending"] == 1
    await asyncio.sleep(0.15)  # past claim_idle_ms
    assert await c.reclaim() == 1
    assert seen == [(1, 1), (1, 2)]
    assert (await redis.xpending(keys.stream(T), "g"))["pending"] == 0


async def test_a_killed_consumer_process_is_taken_over(
    redis: Redis, keys: Keys, infra: Infra, tmp_path: Path
) -> None:
    """A consumer process SIGKILLed inside its handler: another consumer reclaims the entry."""
    bus = StreamBus(redis, keys)
    await bus.ensure_group(T, "g")
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import asyncio, pathlib
        from shared.bus import Consumer, StreamBus
        from shared.keys import Keys
        from shared.redis import connect

        async def main():
            redis = connect({infra.redis_url!r})
            async def hang(event, d):
                pathlib.Path({str(marker)!r}).write_text("x")
                await asyncio.sleep(3600)
            c = Consumer(StreamBus(redis, Keys({keys.prefix!r})), group="g", consumer="victim",
                         types=[{T!r}], handler=hang, block_ms=100)
            while True:
                await c.read_once(block_ms=100)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    try:
        await bus.publish(JobSubmitted(job_id=42, cpus=1))

        async def started() -> bool:
            return marker.exists()

        await wait_for(started, timeout=20, what="the victim to start handling")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    handled: list[int] = []

    async def ok(event: Event, d: Delivery) -> None:
        assert isinstance(event, JobSubmitted)
        handled.append(event.job_id)

    survivor = make_consumer(bus, ok, name="survivor")
    await asyncio.sleep(0.15)
    assert await survivor.reclaim() == 1
    assert handled == [42]
    assert (await redis.xpending(keys.stream(T), "g"))["pending"] == 0


async def test_a_duplicate_event_is_applied_once(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys)
    applied: list[str] = []

    async def handler(event: Event, d: Delivery) -> None:
        applied.append(event.event_id)

    c = make_consumer(bus, handler)
    await c.ensure_groups()
    event = JobSubmitted(job_id=9, cpus=2)
    await bus.publish(event)
    await bus.publish(event)  # published twice (e.g. a retried XADD)
    await bus.publish(JobSubmitted(job_id=10, cpus=1))
    assert await c.read_once() == 3
    assert applied.count(event.event_id) == 1
    assert len(applied) == 2
    assert (await redis.xpending(keys.stream(T), "g"))["pending"] == 0


async def test_too_many_deliveries_go_to_the_dead_letter_stream(
    redis: Redis, keys: Keys
) -> None:
    bus = StreamBus(redis, keys)
    calls: list[int] = []

    async def always_fails(event: Event, d: Delivery) -> None:
        calls.append(d.deliveries)
        raise RuntimeError("poison")

    c = make_consumer(bus, always_fails, max_deliveries=3)
    await c.ensure_groups()
    entry = await bus.publish(JobSubmitted(job_id=5, cpus=1))
    await c.read_once()
    for _ in range(5):
        await asyncio.sleep(0.12)
        await c.reclaim()
    assert calls == [1, 2, 3]  # the handler never sees a fourth delivery
    dead = await redis.xrange(keys.dead_letter)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["id"] == entry and fields["group"] == "g"
    assert fields["deliveries"] == "4"
    assert "JobSubmitted" not in fields["e"] and '"job_id":5' in fields["e"]
    assert (await redis.xpending(keys.stream(T), "g"))["pending"] == 0
    assert c.dead_lettered == 1


async def test_an_undecodable_entry_goes_straight_to_dead_letter(
    redis: Redis, keys: Keys
) -> None:
    bus = StreamBus(redis, keys)
    handled: list[Event] = []

    async def handler(event: Event, d: Delivery) -> None:
        handled.append(event)

    c = make_consumer(bus, handler)
    await c.ensure_groups()
    await redis.xadd(keys.stream(T), {FIELD.decode(): "{not json"})
    await c.read_once()
    assert handled == []
    dead = await redis.xrange(keys.dead_letter)
    assert len(dead) == 1
    assert "not JSON" in dead[0][1]["reason"]


async def test_trimming_never_drops_an_unacknowledged_entry(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys, maxlen=5)
    stream = keys.stream(T)
    failing = {3, 13, 23, 33}

    async def handler(event: Event, d: Delivery) -> None:
        assert isinstance(event, JobSubmitted)
        if event.job_id in failing:
            raise RuntimeError("stays pending")

    fast = Consumer(bus, group="fast", consumer="f", types=[T], handler=handler, batch=40,
                    claim_idle_ms=0)
    slow = Consumer(bus, group="slow", consumer="s", types=[T], handler=handler, batch=1,
                    claim_idle_ms=0)
    await fast.ensure_groups()
    await slow.ensure_groups()
    ids = [await bus.publish(JobSubmitted(job_id=i, cpus=1)) for i in range(100)]
    await fast.read_once()  # delivers 0..39; 3, 13, 23, 33 stay pending
    await slow.read_once()  # delivers (and acknowledges) entry 0 only
    await bus.trim(stream)
    remaining = [eid for eid, _ in await redis.xrange(stream)]
    # The slow group still needs everything after entry 0; the fast group needs 3 onwards.
    assert remaining == ids[1:]

    # Once the slow group has caught up, the fast group's oldest pending entry is the floor.
    while await slow.read_once():
        pass
    await bus.trim(stream)
    remaining = [eid for eid, _ in await redis.xrange(stream)]
    assert remaining == ids[3:]

    # When everything is acknowledged the stream is trimmed down to maxlen, never below.
    failing.clear()
    for c in (fast, slow):
        while await c.reclaim():
            pass
        while await c.read_once():
            pass
        assert (await redis.xpending(stream, c.group))["pending"] == 0
    await bus.trim(stream)
    assert [eid for eid, _ in await redis.xrange(stream)] == ids[-5:]


async def test_trim_respects_undelivered_entries_of_a_lagging_group(
    redis: Redis, keys: Keys
) -> None:
    bus = StreamBus(redis, keys, maxlen=3)
    stream = keys.stream(T)
    await bus.ensure_group(T, "lagging")
    ids = [await bus.publish(JobSubmitted(job_id=i, cpus=1)) for i in range(20)]
    assert await bus.trim(stream) == 0  # nothing delivered to the group yet: keep all
    assert [e for e, _ in await redis.xrange(stream)] == ids


async def test_consumer_recreates_a_vanished_group(redis: Redis, keys: Keys) -> None:
    """After a Redis restart without persistence the stream and group are gone."""
    bus = StreamBus(redis, keys)
    got: list[int] = []

    async def handler(event: Event, d: Delivery) -> None:
        assert isinstance(event, JobSubmitted)
        got.append(event.job_id)

    c = make_consumer(bus, handler)
    await c.ensure_groups()
    await redis.delete(keys.stream(T))
    assert await c.read_once() == 0  # NOGROUP -> group recreated
    await bus.publish(JobSubmitted(job_id=77, cpus=1))
    assert await c.read_once() == 1
    assert got == [77]


@pytest.mark.parametrize("n", [3])
async def test_run_loop_stops_when_asked(redis: Redis, keys: Keys, n: int) -> None:
    bus = StreamBus(redis, keys)
    got: list[int] = []

    async def handler(event: Event, d: Delivery) -> None:
        assert isinstance(event, JobSubmitted)
        got.append(event.job_id)

    c = make_consumer(bus, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    for i in range(n):
        await bus.publish(JobSubmitted(job_id=i, cpus=1))

    async def all_seen() -> bool:
        return len(got) == n

    await wait_for(all_seen, timeout=5, what="all events")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert got == list(range(n))
