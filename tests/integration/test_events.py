"""The merged stream reader (shared/tail.py) and `GET /api/v1/events` on real Redis and
PostgreSQL: order, exact resumption (Last-Event-ID), who sees what, and that a client going
away leaves nothing running."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.events import HUB
from shared.bus import StreamBus
from shared.events import Event, JobFinished, JobStarted, WorkerJoined, WorkerLeft
from shared.keys import Keys
from shared.tail import TYPES, Entry, Filter, Position, Start, StreamReader
from tests.integration.conftest import bearer
from tests.sse import events, messages

pytestmark = pytest.mark.timeout(120)


def finished(job_id: int, state: str = "COMPLETED") -> JobFinished:
    return JobFinished(job_id=job_id, attempt=1, worker_id="big", state=state, exit_code=0)


async def publish_burst(redis: Redis, keys: Keys, batch: list[Event]) -> None:
    """Publish in one MULTI: the entries share a millisecond, so their ids tie across streams."""
    bus = StreamBus(redis, keys)
    async with redis.pipeline(transaction=True) as pipe:
        for e in batch:
            bus.publish_in(pipe, e)
        await pipe.execute()


async def everything(reader: StreamReader) -> list[Entry]:
    until = await reader.end()
    return [e async for e in reader.follow(Position(0, 0, ""), until=until)]


async def mixed_history(redis: Redis, keys: Keys, rounds: int = 20) -> None:
    bus = StreamBus(redis, keys)
    for i in range(rounds):
        await publish_burst(redis, keys, [
            JobStarted(job_id=1000 + i, attempt=1, worker_id="w1"),
            finished(1000 + i),
            WorkerJoined(worker_id=f"w{i}", incarnation="x", hostname="h", cpus=2,
                         memory_mb=100),
        ])
        await bus.publish(WorkerLeft(worker_id=f"w{i}", incarnation="x", reason="shutdown"))


async def test_the_merged_order_is_total_and_resumes_exactly_from_every_entry(
        redis: Redis, keys: Keys) -> None:
    await mixed_history(redis, keys)
    reader = StreamReader(redis, keys, batch=7)  # batches smaller than a stream's length
    seen = await everything(reader)
    assert len(seen) == 80
    positions = [e.position for e in seen]
    assert positions == sorted(positions) and len(set(positions)) == 80
    assert any(a.stream_id == b.stream_id for a, b in itertools.pairwise(seen)), \
        "the bursts should tie ids across streams"
    until = await reader.end()
    for k in range(len(seen)):  # after every entry (an SSE id), exactly the rest
        rest = [e async for e in reader.follow(Position.parse(seen[k].event_id), until=until)]
        assert [e.event_id for e in rest] == [e.event_id for e in seen[k + 1:]]


async def test_from_the_last_n_and_from_a_time(redis: Redis, keys: Keys) -> None:
    await mixed_history(redis, keys, rounds=5)
    reader = StreamReader(redis, keys)
    seen = await everything(reader)
    until = await reader.end()
    for n in (1, 3, 7, 20, 50):
        start = await reader.resolve(Start.parse(f"-{n}"))
        got = [e async for e in reader.follow(start, until=until)]
        assert [e.event_id for e in got] == [e.event_id for e in seen[-n:]]
    pivot = seen[9]
    start = await reader.resolve(Start(at_ms=pivot.position.ms))
    got = [e async for e in reader.follow(start, until=until)]
    assert got == [e for e in seen if e.position.ms >= pivot.position.ms]
    assert got[0].position.ms == pivot.position.ms


async def test_follow_sees_new_entries_in_order_and_only_the_types_asked(
        redis: Redis, keys: Keys) -> None:
    reader = StreamReader(redis, keys, ["job-finished", "worker-left"])
    start = await reader.now()
    seen: list[Entry] = []

    async def tail() -> None:
        async for e in reader.follow(start):
            seen.append(e)
            if len(seen) == 20:
                return

    task = asyncio.create_task(tail())
    await mixed_history(redis, keys, rounds=10)
    await asyncio.wait_for(task, 30)
    # each stream in its own order; across streams, by id (a millisecond's ties by type)
    assert [e.body["job_id"] for e in seen if e.type == "job-finished"] == list(range(1000, 1010))
    assert [e.body["worker_id"] for e in seen if e.type == "worker-left"] == [
        f"w{i}" for i in range(10)]
    assert [e.position for e in seen] == sorted(e.position for e in seen)


async def test_tailing_never_changes_a_consumer_group(redis: Redis, keys: Keys) -> None:
    await mixed_history(redis, keys, rounds=5)
    stream = keys.stream("job-finished")
    await redis.xgroup_create(stream, "scheduler", id="0")
    await redis.xreadgroup("scheduler", "c1", {stream: ">"}, count=2)
    before = (await redis.xinfo_groups(stream), await redis.xpending(stream, "scheduler"))
    reader = StreamReader(redis, keys)
    assert len(await everything(reader)) == 20
    await reader.resolve(Start.parse("-3"))
    await reader.wait(Position(0, 0, ""), block_ms=10)
    after = (await redis.xinfo_groups(stream), await redis.xpending(stream, "scheduler"))
    assert before == after
    assert before[0][0]["pending"] == 2 and before[0][0]["lag"] == 3


# ------------------------------------------------------------------------ GET /api/v1/events


async def submit(http: TestClient[Any, Any], headers: dict[str, str] | None = None) -> int:
    resp = await http.post("/api/v1/jobs", json={"script": "true", "hold": True},
                           headers=headers or {})
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def test_a_user_sees_only_their_jobs_events_and_an_admin_everything(
        http: TestClient[Any, Any], pool: asyncpg.Pool[Any], redis: Redis, keys: Keys) -> None:
    bob = await bearer(pool, "bob")
    admin = await bearer(pool, "root", "admin")
    mine, theirs = await submit(http), await submit(http, bob)
    await publish_burst(redis, keys, [finished(mine), finished(theirs),
                                      WorkerLeft(worker_id="w", incarnation="x", reason="x")])
    resp = await http.get("/api/v1/events", params={"from": "0", "follow": "0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    got = [m.json() async for m in messages(resp.content) if m.data]
    assert [(e["type"], e["job_id"]) for e in got] == [("job-submitted", mine),
                                                        ("job-finished", mine)]
    assert got[1]["job"]["user"] == "ann" and got[1]["job"]["ref"] == str(mine)
    resp = await http.get("/api/v1/events", params={"from": "0", "follow": "0"}, headers=admin)
    every = [m async for m in messages(resp.content) if m.data]
    assert sorted(m.event or "" for m in every) == sorted(
        ["worker-joined",  # the fixture's worker "big"
         "job-submitted", "job-submitted", "job-finished", "job-finished", "worker-left"])
    assert all(m.id and Position.parse(m.id) for m in every)
    # filters: a job, a worker, types, a field
    resp = await http.get("/api/v1/events", params={
        "from": "0", "follow": "0", "job": str(theirs), "types": "job-finished"}, headers=admin)
    assert [(m.event, m.json()["job_id"]) async for m in messages(resp.content) if m.data] == \
        [("job-finished", theirs)]
    resp = await http.get("/api/v1/events", params={"from": "0", "follow": "0", "worker": "w"},
                          headers=admin)
    assert [m.event async for m in messages(resp.content) if m.data] == ["worker-left"]
    resp = await http.get("/api/v1/events", params={"from": "0", "follow": "0",
                                                    "where": "job.user=bob"}, headers=admin)
    assert {m.json()["job_id"] async for m in messages(resp.content) if m.data} == {theirs}


@pytest.mark.parametrize(("query", "code"), [
    ({"types": "job-finished,nope"}, 400), ({"from": "yesterday"}, 400),
    ({"from": "-0"}, 400), ({"where": "state"}, 400), ({"job": "x"}, 400),
    ({"job": "999999"}, 404), ({"worker": "a\x00b"}, 400),
])
async def test_bad_queries_are_4xx_before_anything_streams(
        http: TestClient[Any, Any], query: dict[str, str], code: int) -> None:
    resp = await http.get("/api/v1/events", params=query)
    assert resp.status == code, await resp.text()
    assert (await resp.json())["error"]["message"]


async def test_another_users_job_is_not_found(http: TestClient[Any, Any],
                                              pool: asyncpg.Pool[Any]) -> None:
    theirs = await submit(http, await bearer(pool, "bob"))
    resp = await http.get("/api/v1/events", params={"job": str(theirs)})
    assert resp.status == 404


async def test_resuming_with_last_event_id_loses_and_repeats_nothing(
        http: TestClient[Any, Any], redis: Redis, keys: Keys) -> None:
    job = await submit(http)
    reference: list[str] = []  # every event, in order, as one uninterrupted reader saw it
    got: list[str] = []
    resp = await http.get("/api/v1/events", params={"from": "now"})
    ids: list[str] = []
    for round_ in range(6):
        await publish_burst(redis, keys, [finished(job, "FAILED"),
                                          JobStarted(job_id=job, attempt=2, worker_id="big")])
        first = await events(resp.content, 1 + round_ % 2)  # read part of what is there
        got.extend(m.id or "" for m in first)
        ids = [m.id or "" for m in first]
        resp.close()  # the client goes away mid-stream ...
        await publish_burst(redis, keys, [finished(job, "TIMEOUT"), finished(job)])
        # ... and comes back with the id of the last event it received
        resp = await http.get("/api/v1/events", headers={"Last-Event-ID": ids[-1]})
        assert resp.status == 200
    resp.close()
    resp = await http.get("/api/v1/events", params={"from": "0", "follow": "0"})
    reference = [m.id or "" async for m in messages(resp.content) if m.data]
    # and the last connection, read to the end with follow=0, completes what we got
    tail = await http.get("/api/v1/events", params={"follow": "0"},
                          headers={"Last-Event-ID": got[-1]})
    got.extend([m.id or "" async for m in messages(tail.content) if m.data])
    start = reference.index(got[0])
    assert got == reference[start:]
    assert len(got) == len(set(got))


async def test_follow_delivers_live_events_and_keep_alives(
        http: TestClient[Any, Any], redis: Redis, keys: Keys) -> None:
    http.app[HUB].keepalive_s = 0.2
    job = await submit(http)
    resp = await http.get("/api/v1/events", params={"types": "job-finished"})
    comments: list[str] = []
    stream = messages(resp.content)
    while not any("keep-alive" in c for c in comments):
        comments.extend((await anext(stream)).comments)
    await StreamBus(redis, keys).publish(finished(job))
    while True:
        m = await anext(stream)
        if m.data:
            break
    assert m.event == "job-finished" and m.json()["job_id"] == job
    resp.close()


async def test_500_clients_that_go_away_leave_nothing_running(
        http: TestClient[Any, Any], redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]) -> None:
    hub = http.app[HUB]
    # 50 at once: more than one token may hold open (SCNS_MAX_STREAMS_PER_TOKEN), so 10 tokens
    tokens = [await bearer(pool, f"u{i}", "admin") for i in range(10)]
    baseline = len(asyncio.all_tasks())

    async def visit(i: int) -> None:
        resp = await http.get("/api/v1/events", params={"from": "-1"} if i % 2 else {},
                              headers=tokens[i % len(tokens)])
        assert resp.status == 200
        await resp.content.readline()  # the stream has started ...
        resp.close()  # ... and the client disconnects

    for start in range(0, 500, 50):  # 50 at a time, 500 in all
        await asyncio.gather(*(visit(i) for i in range(start, start + 50)))
        await StreamBus(redis, keys).publish(finished(1))
    deadline = asyncio.get_running_loop().time() + 30
    while len(asyncio.all_tasks()) > baseline or hub.subscribers or hub.task is not None:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{asyncio.all_tasks()} tasks, baseline {baseline}, "
            f"{len(hub.subscribers)} subscribers")
        await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == baseline


def test_the_filter_keeps_worker_events_from_users() -> None:
    e = Entry("worker-left", "5-0", {"worker_id": "w"})
    assert Filter(types=frozenset(TYPES)).matches(e, None)
    assert not Filter(types=frozenset(TYPES), owner="ann").matches(e, None)


async def test_a_client_that_drops_before_any_event_resumes_from_where_it_started(
        http: TestClient[Any, Any], redis: Redis, keys: Keys) -> None:
    job = await submit(http)
    resp = await http.get("/api/v1/events", params={"from": "now", "types": "job-finished"})
    first = await anext(messages(resp.content))
    assert first.id and not first.data  # where the stream starts, as an id alone
    resp.close()
    await publish_burst(redis, keys, [finished(job), finished(job, "FAILED")])  # while away
    again = await http.get("/api/v1/events", params={"follow": "0", "types": "job-finished"},
                           headers={"Last-Event-ID": first.id})
    got = [m.json()["state"] async for m in messages(again.content) if m.data]
    assert got == ["COMPLETED", "FAILED"]
