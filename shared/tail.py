"""Reading the event streams for people: `scns tail` and the gateway's `GET /api/v1/events`.

Every event type has a stream of its own, so "the events since X" is a merge of several
streams. Entries are merged in the order of their stream ids, ties (two streams can give the
same id) broken by the type's name: a `Position` (id, type) is a point in that one order, and
"everything after a position" is exact, so a reader that resumes from the position of the last
event it saw neither loses nor repeats one.

A merged read must not pass an entry that another stream has not written yet. Stream ids come
from the Redis server's clock (`XADD *` takes the current millisecond, or the stream's last id
plus one when that is later), so a read that runs in one MULTI with `TIME` knows every stream is
complete below the current millisecond: entries of that millisecond are held back for the next
read. (A Redis clock that steps backwards breaks that promise for as long as the step.)

Tailing reads with XRANGE and XREAD only, never through a consumer group: it cannot take an
event from a service, or change what a group has pending.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from shared.db.queries import q
from shared.events import EVENT_TYPES, FIELD, CancelRequested
from shared.keys import Keys
from shared.redis import MAX_BLOCK_MS

# Every event type with a stream of its own (cancel requests travel on per-worker streams).
TYPES: tuple[str, ...] = tuple(sorted(t for t in EVENT_TYPES if t != CancelRequested.TYPE))
JOB_TYPES = frozenset(t for t in TYPES if t.startswith("job-"))
BEFORE_ALL = ""  # a type name below every type: (id, BEFORE_ALL) is just before id
AFTER_ALL = "~"  # above every type (type names are lower case and '-')
BATCH = 500
MAX_BACK = 100_000  # the most `-N` may ask for
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID = re.compile(r"^(\d{1,20})-(\d{1,20})(?::([a-z][a-z0-9-]{0,63}))?$")
MAX_PART = 2**64 - 1
_FIELD = FIELD.decode()


class PositionError(ValueError):
    """A `from` that is not a stream id, a time or -N."""


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A point in the merged order: after every entry whose (ms, seq, type) is not above it."""

    ms: int
    seq: int
    type: str = AFTER_ALL

    @classmethod
    def parse(cls, text: str) -> Position:
        """`1764680531204-0` (after that id in every stream) or `1764680531204-0:job-finished`
        (after that one event: an SSE event id)."""
        m = _ID.match(text.strip())
        if m is None:
            raise PositionError(f"{text.strip()[:60]!r} is not a stream id (e.g. 1764680531204-0)")
        ms, seq = int(m[1]), int(m[2])
        if ms > MAX_PART or seq > MAX_PART:
            raise PositionError(f"{text.strip()[:60]!r}: a stream id's parts are below 2^64")
        kind = m[3]
        if kind is not None and kind not in TYPES:
            raise PositionError(f"{kind!r} is not an event type (one of {', '.join(TYPES)})")
        return cls(ms, seq, kind or AFTER_ALL)

    @classmethod
    def at_ms(cls, ms: int) -> Position:
        """Just before the first entry of millisecond `ms`."""
        return cls(max(ms, 0), 0, BEFORE_ALL)

    @property
    def stream_id(self) -> str:
        return f"{self.ms}-{self.seq}"

    def token(self) -> str:
        """This position as an id `parse` reads back (what a client resumes after)."""
        if self.type == AFTER_ALL:
            return self.stream_id
        if self.type != BEFORE_ALL:
            return f"{self.stream_id}:{self.type}"
        if self.seq > 0:
            return f"{self.ms}-{self.seq - 1}"
        return f"{self.ms - 1}-{MAX_PART}" if self.ms > 0 else "0-0"

    def start(self, kind: str) -> str:
        """XRANGE's start for stream `kind`: the first entry after this position."""
        return f"({self.stream_id}" if kind <= self.type else self.stream_id

    def after(self, kind: str) -> str:
        """XREAD's (exclusive) id for stream `kind`."""
        if kind <= self.type:
            return self.stream_id
        if self.seq > 0:
            return f"{self.ms}-{self.seq - 1}"
        return f"{self.ms - 1}-{MAX_PART}" if self.ms > 0 else "0-0"


def split_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its event's JSON body (as published), decoded."""

    type: str
    stream_id: str
    body: dict[str, Any]

    @property
    def position(self) -> Position:
        ms, seq = split_id(self.stream_id)
        return Position(ms, seq, self.type)

    @property
    def event_id(self) -> str:
        """The id a reader resumes after (the SSE `id:`): the stream id and the stream."""
        return f"{self.stream_id}:{self.type}"

    @property
    def job_id(self) -> int | None:
        v = self.body.get("job_id")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def worker_id(self) -> str | None:
        v = self.body.get("worker_id")
        return v if isinstance(v, str) else None

    def json(self) -> dict[str, Any]:
        """The body as a reader shows it: the event, plus where it is in the streams."""
        return {**self.body, "type": self.type, "stream_id": self.stream_id}


def decode_entry(kind: str, stream_id: str, fields: Mapping[str, str]) -> Entry:
    raw = fields.get(_FIELD, "")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):  # shown, not dropped: a tail is for seeing what is there
        body = {"type": kind, "undecodable": raw[:1000]}
    return Entry(kind, stream_id, body)


@dataclass(frozen=True, slots=True)
class Batch:
    entries: list[Entry]
    more: bool  # a stream had more than one read takes: read again at once
    held: bool  # entries of the current millisecond wait for the next read


def check_types(names: Iterable[str]) -> tuple[str, ...]:
    out = sorted(set(names))
    unknown = [n for n in out if n not in TYPES]
    if unknown:
        raise PositionError(f"unknown event type {unknown[0]!r}: one of {', '.join(TYPES)}")
    return tuple(out) or TYPES


class StreamReader:
    """Reads the streams of `types` in the merged order, from any position."""

    def __init__(self, redis: Redis, keys: Keys, types: Sequence[str] = TYPES, *,
                 batch: int = BATCH) -> None:
        self.redis = redis
        self.keys = keys
        self.types = tuple(sorted(types))
        self.batch = batch

    async def server_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def now(self) -> Position:
        """Just before what is written from now on."""
        return Position.at_ms(await self.server_ms())

    async def end(self) -> Position:
        """Just after everything written so far (a read to here waits out this millisecond)."""
        return Position(await self.server_ms(), 2**64 - 1, AFTER_ALL)

    async def read(self, after: Position) -> Batch:
        """The entries after `after` that every stream is complete up to, in order."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            for kind in self.types:
                pipe.xrange(self.keys.stream(kind), min=after.start(kind), count=self.batch)
            results = await pipe.execute()
        sec, usec = results[0]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        limit = Position(now_ms, 0, BEFORE_ALL)  # below the current millisecond: complete
        more = False
        found: list[Entry] = []
        for kind, rows in zip(self.types, results[1:], strict=True):
            entries = [decode_entry(kind, sid, fields) for sid, fields in rows]
            if len(entries) >= self.batch:  # this stream may go on past its last entry
                more = True
                limit = min(limit, entries[-1].position)
            found.extend(entries)
        found.sort(key=lambda e: e.position)
        ready = [e for e in found if e.position <= limit]
        return Batch(ready, more=more, held=len(ready) < len(found) and not more)

    async def wait(self, after: Position, block_ms: int = MAX_BLOCK_MS) -> None:
        """Return when a stream may have an entry after `after` (or after `block_ms`)."""
        streams: dict[Any, Any] = {self.keys.stream(k): after.after(k) for k in self.types}
        await self.redis.xread(streams, count=1, block=block_ms)

    async def follow(self, after: Position, *, until: Position | None = None,
                     stop: asyncio.Event | None = None) -> AsyncIterator[Entry]:
        """Every entry after `after`, in order, then (without `until`) each new one as it is
        written; with `until`, stop at the first entry past it; with `stop`, once it is set
        (within a second: the blocking read is short, and nothing is cancelled mid-command; a
        cancel that meets redis-py's read timeout can come out as a retried TimeoutError)."""
        block_ms = MAX_BLOCK_MS if stop is None else 1000
        while stop is None or not stop.is_set():
            got = await self.read(after)
            for e in got.entries:
                if until is not None and e.position > until:
                    return
                yield e
                after = e.position
            if got.more:
                continue
            if got.held:  # the rest of this millisecond: wait for the clock, not for Redis
                await asyncio.sleep(0.002)
                continue
            if until is not None:
                return
            await self.wait(after, block_ms)

    async def last(self, n: int) -> Position:
        """The position just before the last `n` entries (of all the streams together)."""
        if n <= 0:
            return await self.now()
        n = min(n, MAX_BACK)
        async with self.redis.pipeline(transaction=True) as pipe:
            for kind in self.types:
                pipe.xrevrange(self.keys.stream(kind), count=n + 1)  # the n+1st is the start
            results = await pipe.execute()
        tail: list[Position] = []
        for kind, rows in zip(self.types, results, strict=True):
            tail.extend(Position(*split_id(sid), kind) for sid, _ in rows)
        if len(tail) <= n:
            return Position(0, 0, BEFORE_ALL)
        tail.sort()
        return tail[-n - 1]

    async def resolve(self, start: Start) -> Position:
        if start.position is not None:
            return start.position
        if start.at_ms is not None:
            return Position.at_ms(start.at_ms)
        if start.last is not None:
            return await self.last(start.last)
        return await self.now()


@dataclass(frozen=True, slots=True)
class Start:
    """Where a reader starts: after a position, at a time, the last N, or now."""

    position: Position | None = None
    at_ms: int | None = None
    last: int | None = None

    @classmethod
    def parse(cls, text: str | None, *, default_last: int | None = None) -> Start:
        """A stream id (`1764680531204-0`, or an event id `…-0:job-finished`), an ISO 8601
        time (`2026-12-02T13:00:00Z`; no zone is UTC), `-N` (the last N), `now` or `0` (the
        beginning); none: the last `default_last`, else now."""
        text = (text or "").strip()
        if not text:
            return cls(last=default_last) if default_last is not None else cls()
        if text in {"now", "$"}:
            return cls()
        if text in ("0", "0-0", "begin"):
            return cls(position=Position(0, 0, BEFORE_ALL))
        if text.startswith("-") and text[1:].isdigit():
            n = int(text[1:])
            if not 0 < n <= MAX_BACK:
                raise PositionError(f"-N: N is 1 to {MAX_BACK}")
            return cls(last=n)
        if _ID.match(text):
            return cls(position=Position.parse(text))
        return cls(at_ms=parse_time_ms(text))


def parse_time_ms(text: str) -> int:
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise PositionError(
            f"from={text[:60]!r}: expected a stream id (1764680531204-0), an ISO 8601 time "
            "(2026-12-02T13:00:00Z), -N (the last N events) or now") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return time_ms(when, text)


def time_ms(when: datetime, text: str) -> int:
    """Milliseconds since the epoch, exactly (no float rounding); years 1970 to 9999."""
    try:
        year = when.astimezone(UTC).year
    except OverflowError:  # 0001-01-01T00:00+05:00 is before the year 1
        year = 0
    if not 1970 <= year <= 9999:
        raise PositionError(f"from={text[:60]!r}: the year is out of range (1970 to 9999)")
    return (when - EPOCH) // timedelta(milliseconds=1)


# ----------------------------------------------------------------- who a job event is about


@dataclass(frozen=True, slots=True)
class JobInfo:
    id: int
    user: str
    name: str
    array_job_id: int | None
    array_task_id: int | None

    @property
    def ref(self) -> str:
        if self.array_job_id is None or self.array_task_id is None:
            return str(self.id)
        return f"{self.array_job_id}_{self.array_task_id}"

    def json(self) -> dict[str, Any]:
        return {"ref": self.ref, "user": self.user, "name": self.name}


@dataclass(slots=True)
class JobDirectory:
    """Job id → owner, name and array place, from PostgreSQL, remembered (they never change)."""

    pool: asyncpg.Pool[Any]
    size: int = 100_000
    _known: OrderedDict[int, JobInfo] = field(default_factory=OrderedDict)

    async def lookup(self, ids: Iterable[int]) -> dict[int, JobInfo]:
        wanted = set(ids)
        out = {i: self._known[i] for i in wanted if i in self._known}
        missing = sorted(wanted - out.keys())
        if missing:
            rows = await self.pool.fetch(q("job_directory"), missing)
            for r in rows:
                info = JobInfo(r["id"], r["user_name"], r["name"], r["array_job_id"],
                               r["array_task_id"])
                out[info.id] = info
                self._known[info.id] = info
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        for i in out:
            self._known.move_to_end(i)
        return out

    async def enrich(self, entries: Sequence[Entry]) -> dict[int, JobInfo]:
        ids = {e.job_id for e in entries if e.job_id is not None and e.type in JOB_TYPES}
        return await self.lookup(ids) if ids else {}


# ------------------------------------------------------------------------------- filtering


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries a reader wants. `job` matches a job, an array's every element (by the
    array's id) or one element; `owner` limits to one user's jobs and schedules (their
    worker events are not theirs to see); `where` compares a field's text."""

    types: frozenset[str] = frozenset(TYPES)
    job_ids: frozenset[int] | None = None  # the event's job_id is one of these
    array_id: int | None = None  # ... or the job is an element of this array
    worker: str | None = None
    owner: str | None = None
    where: tuple[tuple[str, str], ...] = ()

    def needs_jobs(self) -> bool:
        return self.owner is not None or self.array_id is not None

    def matches(self, e: Entry, job: JobInfo | None) -> bool:
        if e.type not in self.types:
            return False
        if self.owner is not None and not self._owned(e, job):
            return False
        if (self.job_ids is not None or self.array_id is not None) and not self._job(e, job):
            return False
        if self.worker is not None and e.worker_id != self.worker:
            return False
        if not self.where:
            return True
        body = enriched(e, job)
        return all(field_text(body, k) == v for k, v in self.where)

    def _owned(self, e: Entry, job: JobInfo | None) -> bool:
        if e.type in JOB_TYPES:
            return job is not None and job.user == self.owner
        return e.body.get("user") == self.owner  # schedules carry their user; workers: none

    def _job(self, e: Entry, job: JobInfo | None) -> bool:
        if self.job_ids is not None and e.job_id in self.job_ids:
            return True
        return self.array_id is not None and job is not None and job.array_job_id == self.array_id


def field_text(body: Mapping[str, Any], name: str) -> str | None:
    """A field's value as `--where` compares it (`state`, `exit_code`, `job.user`), as text."""
    value: Any = body
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def parse_where(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PositionError(f"--where {item!r}: expected FIELD=VALUE (e.g. state=FAILED)")
        out.append((name.strip(), value))
    return tuple(out)


def enriched(e: Entry, job: JobInfo | None) -> dict[str, Any]:
    """The entry as a reader shows it, with whose job it is about (`job`: ref, user, name);
    an array's submission names the array (`12`), not its first element (`12_0`)."""
    out = e.json()
    if job is not None:
        out["job"] = job.json()
        if e.type == "job-submitted" and e.body.get("array_size") is not None:
            out["job"]["ref"] = str(job.array_job_id or job.id)
    return out
