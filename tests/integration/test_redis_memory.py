"""What Redis holds stays bounded, against the real Redis: job output keys carry a TTL from their
first entry (and keep it while the job runs), the output cap bounds both the bytes and the
number of entries of a stream, and the dead-letter stream is trimmed."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.bus import Consumer, Delivery, StreamBus
from shared.events import FIELD, Event, JobSubmitted
from shared.keys import Keys
from shared.output import ENTRY_COST, OutputShipper, Tail, read_output
from tests.helpers import Clock

TTL = 600


@pytest.fixture
def clock() -> Clock:
    return Clock()


def shipper(redis: Redis, keys: Keys, clock: Clock, cap_bytes: int = 1 << 20) -> OutputShipper:
    return OutputShipper(redis, keys, cap_bytes=cap_bytes, ttl_s=TTL, clock=clock)


def tail_in(tmp_path: Path, job_id: int = 1) -> Tail:
    jobdir = tmp_path / f"{job_id}.1"
    jobdir.mkdir()
    return Tail(job_id=job_id, attempt=1, jobdir=jobdir)


def append(tail: Tail, stream: str, data: bytes) -> None:
    with (tail.jobdir / stream).open("ab") as f:
        f.write(data)


async def stored(redis: Redis, keys: Keys, tail: Tail, stream: str
                 ) -> tuple[list[str], int, int]:
    """(data texts, their UTF-8 bytes, entries in all: notes and eof included)."""
    entries = await redis.xrange(keys.job_output(tail.job_id, tail.attempt, stream))
    texts = [f["d"] for _, f in entries if "d" in f]
    return texts, sum(len(t.encode()) for t in texts), len(entries)


async def used_memory(redis: Redis, key: str) -> int:
    return int(await redis.memory_usage(key, samples=0) or 0)


def about(cap: int) -> int:
    """Bytes Redis may use for a stream charged `cap`: allocator size classes round up by up to
    a quarter, plus the note, the eof entry and the stream's own structures."""
    return cap * 5 // 4 + 1024


def is_note(text: str) -> bool:
    return text.startswith("\n[scns: output truncated here")


# --- TTL ---------------------------------------------------------------------------------------
async def test_output_keys_have_a_ttl_from_the_first_ship_of_a_running_job(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    """An executor that vanishes after its first ship must not leave keys forever."""
    s, tail = shipper(redis, keys, clock), tail_in(tmp_path)
    out, err = (keys.job_output(1, 1, name) for name in ("stdout", "stderr"))
    append(tail, "stdout", b"hello\n")
    assert await s.ship(tail) == 6  # not final: the job still runs
    assert 0 < await redis.ttl(out) <= TTL
    assert await redis.exists(err) == 0  # nothing written there: no key at all
    append(tail, "stderr", b"oops\n")
    clock.now += 1
    await s.ship(tail)
    assert 0 < await redis.ttl(err) <= TTL


async def test_a_quiet_running_job_keeps_its_output_alive(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    s, tail = shipper(redis, keys, clock), tail_in(tmp_path)
    out = keys.job_output(1, 1, "stdout")
    append(tail, "stdout", b"started\n")
    await s.ship(tail)
    await redis.expire(out, 30)  # as if most of the TTL had passed since that ship
    clock.now += TTL / 4 - 1
    assert await s.ship(tail) == 0
    assert await redis.ttl(out) <= 30, "no renewal round trip before a quarter TTL"
    clock.now += 1
    assert await s.ship(tail) == 0  # nothing new, but the keys are renewed
    assert await redis.ttl(out) > TTL - 10
    text, _, eof = await read_output(redis, keys, job_id=1, attempt=1, stream="stdout")
    assert (text, eof) == ("started\n", False)


async def test_the_final_ship_ends_both_streams_and_keeps_the_ttl(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    s, tail = shipper(redis, keys, clock), tail_in(tmp_path)
    append(tail, "stdout", b"done\n")
    await s.ship(tail)
    clock.now += 1
    await s.ship(tail, final=True)
    for stream in ("stdout", "stderr"):
        assert 0 < await redis.ttl(keys.job_output(1, 1, stream)) <= TTL
        _, _, eof = await read_output(redis, keys, job_id=1, attempt=1, stream=stream)
        assert eof, stream


async def test_a_job_that_never_wrote_leaves_no_keys(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    s, tail = shipper(redis, keys, clock), tail_in(tmp_path)
    for _ in range(3):
        clock.now += TTL
        assert await s.ship(tail) == 0
    assert await s.ship(tail, final=True) == 0
    assert [k async for k in redis.scan_iter(match=keys.pattern())] == []


# --- the cap -----------------------------------------------------------------------------------
async def test_the_cap_bounds_the_entries_of_a_job_writing_tiny_lines(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    """One byte per ship (a progress dot a second) used to cost one entry each, unbounded by a
    cap that only counted bytes: each entry is now charged ENTRY_COST too."""
    cap = 4096
    s, tail = shipper(redis, keys, clock, cap_bytes=cap), tail_in(tmp_path)
    for _ in range(400):
        append(tail, "stdout", b".")
        clock.now += 1
        await s.ship(tail)
    await s.ship(tail, final=True)
    texts, size, entries = await stored(redis, keys, tail, "stdout")
    *data, note = texts
    assert is_note(note) and not any(map(is_note, data))
    assert size - len(note.encode()) + ENTRY_COST * len(data) <= cap
    assert len(data) <= cap // (ENTRY_COST + 1)
    assert entries == len(data) + 2  # the note and the end of file
    assert "".join(data) == "." * len(data), "a prefix of the file, in order"
    # and the memory Redis uses for it is about the cap, not 400 entries' worth
    assert await used_memory(redis, keys.job_output(1, 1, "stdout")) <= about(cap)


async def test_the_cap_bounds_a_large_write_note_and_eof_included(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    cap = 64 * 1024
    s, tail = shipper(redis, keys, clock, cap_bytes=cap), tail_in(tmp_path)
    line = b"0123456789abcdef" * 4 + b"\n"
    append(tail, "stdout", line * (4 * cap // len(line)))
    await s.ship(tail)
    append(tail, "stdout", line * 100)  # more after the cap: nothing more is shipped
    assert await s.ship(tail) == 0
    await s.ship(tail, final=True)
    texts, size, entries = await stored(redis, keys, tail, "stdout")
    *data, note = texts
    assert is_note(note) and str(tail.jobdir / "stdout") in note
    assert size - len(note.encode()) + ENTRY_COST * len(data) <= cap
    assert size <= cap + len(note.encode())
    assert entries == len(data) + 2
    assert (tail.jobdir / "stdout").read_bytes().startswith("".join(data).encode())
    assert await used_memory(redis, keys.job_output(1, 1, "stdout")) <= about(cap)


async def test_the_cap_counts_the_bytes_redis_stores_for_undecodable_output(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    """Each invalid byte is shipped as U+FFFD, three bytes in Redis: the cap counts those."""
    cap = 16 * 1024
    s, tail = shipper(redis, keys, clock, cap_bytes=cap), tail_in(tmp_path)
    append(tail, "stderr", b"\xff" * cap)
    await s.ship(tail, final=True)
    texts, size, _ = await stored(redis, keys, tail, "stderr")
    *data, note = texts
    assert is_note(note)
    assert set("".join(data)) == {"\ufffd"}
    assert size - len(note.encode()) + ENTRY_COST * len(data) <= cap


async def test_output_under_the_cap_is_shipped_whole(
    redis: Redis, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    s, tail = shipper(redis, keys, clock, cap_bytes=4096), tail_in(tmp_path)
    text = "h\u00e9llo w\u00f6rld \u2603\n" * 50  # multi-byte characters across reads
    append(tail, "stdout", text.encode())
    await s.ship(tail, final=True)
    got, _, eof = await read_output(redis, keys, job_id=1, attempt=1, stream="stdout")
    assert (got, eof) == (text, True)


# --- the dead-letter stream --------------------------------------------------------------------
async def test_the_dead_letter_stream_stays_bounded(redis: Redis, keys: Keys) -> None:
    maxlen, poisoned = 200, 1000
    bus = StreamBus(redis, keys, dead_letter_maxlen=maxlen)

    async def handler(event: Event, d: Delivery) -> None:
        raise AssertionError("an undecodable entry never reaches the handler")

    c = Consumer(bus, group="g", consumer="c", types=[JobSubmitted.TYPE], handler=handler,
                 batch=100, block_ms=10)
    await c.ensure_groups()
    stream = keys.stream(JobSubmitted.TYPE)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(poisoned):
            pipe.xadd(stream, {FIELD.decode(): f"{{not json {i}"})
        await pipe.execute()
    while await c.read_once():
        pass
    assert c.dead_lettered == poisoned
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    # MAXLEN ~ drops whole stream nodes only: the stream may exceed maxlen by less than one.
    node = int((await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    length = await redis.xlen(keys.dead_letter)
    assert maxlen <= length < maxlen + max(node, 1)
    newest = await redis.xrevrange(keys.dead_letter, count=1)
    assert newest[0][1]["e"] == f"{{not json {poisoned - 1}", "the oldest go first"


async def test_dead_lettering_twice_moves_an_entry_once(redis: Redis, keys: Keys) -> None:
    bus = StreamBus(redis, keys)
    stream = keys.stream(JobSubmitted.TYPE)
    await bus.ensure_stream_group(stream, "g")
    entry = await redis.xadd(stream, {FIELD.decode(): "x"})
    await redis.xreadgroup("g", "c", {stream: ">"})
    args = ["g", entry, 9, "test", "x"]
    assert await bus.scripts.run("dead_letter", [stream, keys.dead_letter], [*args, 5]) == 1
    assert await bus.scripts.run("dead_letter", [stream, keys.dead_letter], [*args, 5]) == 0
    # without a maxlen (an older caller) it still moves, untrimmed
    entry2 = await redis.xadd(stream, {FIELD.decode(): "y"})
    await redis.xreadgroup("g", "c", {stream: ">"})
    assert await bus.scripts.run("dead_letter", [stream, keys.dead_letter],
                                 ["g", entry2, 9, "test", "y"]) == 1
    assert [f["id"] for _, f in await redis.xrange(keys.dead_letter)] == [entry, entry2]
    assert (await redis.xpending(stream, "g"))["pending"] == 0
