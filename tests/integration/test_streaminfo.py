"""shared/streaminfo.py against a real Redis: lag, pending entries and their age, per group, on
the event streams and the workers' control streams."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.bus import FIELD_NAME, StreamBus
from shared.events import CancelRequested, JobFinished
from shared.keys import Keys
from shared.streaminfo import GroupInfo, entry_ms, stream_groups
from tests.helpers import delete_prefix

FINISHED = JobFinished.TYPE


async def redis_ms(redis: Redis) -> float:
    s, us = await redis.time()
    return float(s * 1000 + us / 1000)


def finished(i: int) -> JobFinished:
    return JobFinished(job_id=i, attempt=1, worker_id="w1", state="COMPLETED", exit_code=0)


def by_group(infos: list[GroupInfo]) -> dict[tuple[str, str], GroupInfo]:
    return {(i.name, i.group): i for i in infos}


async def test_nothing_to_report_on_an_empty_prefix(redis: Redis, keys: Keys) -> None:
    assert await stream_groups(redis, keys) == []
    # a stream nobody reads through a group is absent too
    await StreamBus(redis, keys).publish(finished(1))
    assert await stream_groups(redis, keys) == []


async def test_lag_pending_and_age_of_each_group(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys)
    for group in ("idle", "behind", "caught-up"):
        await bus.ensure_group(FINISHED, group)
    ids = [await bus.publish(finished(i)) for i in range(5)]
    stream = keys.stream(FINISHED)
    # "behind" is delivered two entries and acknowledges none; "caught-up" reads and ACKs all
    got = await redis.xreadgroup("behind", "c1", {stream: ">"}, count=2)
    assert [eid for eid, _ in got[0][1]] == ids[:2]
    got = await redis.xreadgroup("caught-up", "c2", {stream: ">"})
    assert await redis.xack(stream, "caught-up", *[eid for eid, _ in got[0][1]]) == 5

    before = await redis_ms(redis)
    infos = await stream_groups(redis, keys)
    after = await redis_ms(redis)

    assert [(i.name, i.group) for i in infos] == [
        (FINISHED, "behind"), (FINISHED, "caught-up"), (FINISHED, "idle")]
    g = by_group(infos)
    behind = g[FINISHED, "behind"]
    assert (behind.stream, behind.consumers, behind.pending, behind.lag,
            behind.last_delivered_id) == (stream, 1, 2, 3, ids[1])
    assert behind.oldest_pending_s is not None
    assert (before - entry_ms(ids[0])) / 1000 <= behind.oldest_pending_s
    assert behind.oldest_pending_s <= (after - entry_ms(ids[0])) / 1000
    caught_up = g[FINISHED, "caught-up"]
    assert (caught_up.consumers, caught_up.pending, caught_up.lag,
            caught_up.oldest_pending_s, caught_up.last_delivered_id) == (1, 0, 0, None, ids[4])
    idle = g[FINISHED, "idle"]
    assert (idle.consumers, idle.pending, idle.lag, idle.oldest_pending_s,
            idle.last_delivered_id) == (0, 0, 5, None, "0-0")


async def test_the_oldest_pending_age_is_its_entry_ids_time_against_redis_time(
    redis: Redis, keys: Keys
) -> None:
    """Entries an hour old (ids set explicitly): the age is measured on Redis's clock."""
    stream = keys.stream(FINISHED)
    hour_ago = int(await redis_ms(redis)) - 3_600_000
    for i in range(3):
        await redis.xadd(stream, {FIELD_NAME: finished(i).encode()}, id=f"{hour_ago + i}-0")
    await StreamBus(redis, keys).ensure_group(FINISHED, "g")
    await redis.xreadgroup("g", "c", {stream: ">"}, count=2)
    await redis.xack(stream, "g", f"{hour_ago}-0")  # the oldest pending is now the second

    before = await redis_ms(redis)
    [info] = await stream_groups(redis, keys)
    after = await redis_ms(redis)
    assert (info.pending, info.lag, info.last_delivered_id) == (1, 1, f"{hour_ago + 1}-0")
    assert info.oldest_pending_s is not None
    assert (before - hour_ago - 1) / 1000 <= info.oldest_pending_s
    assert info.oldest_pending_s <= (after - hour_ago - 1) / 1000
    assert 3599 < info.oldest_pending_s < 3700


async def test_lag_is_none_when_redis_cannot_tell(redis: Redis, keys: Keys) -> None:
    """An entry deleted in the range a group has yet to read: Redis no longer knows the lag."""
    bus = StreamBus(redis, keys)
    await bus.ensure_group(FINISHED, "g")
    ids = [await bus.publish(finished(i)) for i in range(4)]
    await redis.xreadgroup("g", "c", {keys.stream(FINISHED): ">"}, count=1)
    await redis.xdel(keys.stream(FINISHED), ids[2])
    [info] = await stream_groups(redis, keys)
    assert (info.pending, info.lag) == (1, None)


async def test_control_streams_are_found_by_their_prefix(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys)
    for worker in ("w2", "w1"):
        await bus.ensure_stream_group(keys.control(worker), "executor")
    await bus.publish_to(keys.control("w1"), CancelRequested(job_id=7, attempt=1))
    await bus.ensure_group(FINISHED, "scheduler")
    # another cluster sharing this Redis (its own prefix) is not ours to report
    other = Keys("{streaminfo-other}:")
    try:
        await StreamBus(redis, other).ensure_stream_group(other.control("w1"), "executor")
        infos = await stream_groups(redis, keys)
    finally:
        await delete_prefix(redis, other)
    assert [(i.name, i.group, i.stream, i.lag) for i in infos] == [
        ("control:w1", "executor", keys.control("w1"), 1),
        ("control:w2", "executor", keys.control("w2"), 0),
        (FINISHED, "scheduler", keys.stream(FINISHED), 0),
    ]
