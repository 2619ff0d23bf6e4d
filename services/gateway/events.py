"""`GET /api/v1/events`: the event streams as Server-Sent Events, and `GET /api/v1/streams`.

Each SSE event's `id:` is its place in the streams (`<stream id>:<type>`, shared/tail.py), so a
client that reconnects with `Last-Event-ID` resumes right after the last event it received:
nothing lost, nothing repeated. A connection first reads what it asked for from the streams
themselves (from an id, a time, the last N, or now), then follows the live events that one
reader per gateway (the `Hub`) fans out to every connection: a thousand dashboards cost one
blocking Redis read, not a thousand. An admin sees every event; a user only their own jobs' and
schedules' events.

A connection whose client went away ends within a second (the handler checks its transport
while it waits) and leaves nothing behind; the hub stops when its last client leaves. A client
too slow to keep up (its queue of live events fills) is disconnected and resumes from its last
id, reading the rest from the streams. Every connection holds one of the gateway's stream slots
and ends after SCNS_FOLLOW_MAX_S, with a comment that says to resume (services/gateway/
throttle.py); `scns tail -f`, the dashboard's feed and a browser's EventSource reconnect with
their Last-Event-ID by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.gateway.common import (
    LongResponse,
    client_gone,
    json,
    principal,
    require_admin,
    state,
)
from services.gateway.throttle import THROTTLE
from services.gateway.validation import MAX_ID, RequestError, query_text
from shared.arrays import SpecError, parse_ref
from shared.db import UNAVAILABLE
from shared.streaminfo import stream_groups
from shared.tail import (
    TYPES,
    Entry,
    Filter,
    JobDirectory,
    JobInfo,
    Position,
    PositionError,
    Start,
    StreamReader,
    check_types,
    enriched,
    parse_where,
)
from shared.wiring import Wiring

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

KEEPALIVE_S = 15.0
QUEUE_MAX = 10_000  # live events a connection may fall behind by before it is let go
RETRY_MS = 2000  # what a browser's EventSource waits before reconnecting

Item = tuple[Entry, JobInfo | None]


@dataclass(eq=False, slots=True)
class Subscription:
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    overflowed: bool = False

    async def get(self, within_s: float) -> Item | None:
        try:
            return await asyncio.wait_for(self.queue.get(), within_s)
        except TimeoutError:
            return None


class Hub:
    """One live reader of every stream per gateway; each entry goes to every subscriber."""

    def __init__(self, wiring: Wiring, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self.reader = StreamReader(wiring.redis, wiring.keys)
        self.directory = JobDirectory(wiring.pool)
        self.keepalive_s = keepalive_s
        self.subscribers: set[Subscription] = set()
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self.subscribers.add(sub)
        if self.task is None:
            self._stop = asyncio.Event()
            self.task = asyncio.create_task(self._run(self._stop), name="events-hub")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def close(self) -> None:
        self.subscribers.clear()
        task = self.task
        self._halt()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, stop: asyncio.Event) -> None:
        # `stop`, not only the cancel: a cancel that meets a Redis timeout can come out as a
        # TimeoutError (asyncio.timeout in 3.11), and a loop that retries errors would go on
        after: Position | None = None
        while not stop.is_set():
            try:
                if after is None:
                    after = await self.reader.now()
                after = await self._pass(after)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if stop.is_set():
                    return
                if isinstance(e, (RedisError, *UNAVAILABLE)):
                    log.warning("event hub: %s; retrying", e)
                else:
                    log.exception("event hub failed; retrying")
                await asyncio.sleep(1.0)

    async def _pass(self, after: Position) -> Position:
        got = await self.reader.read(after)
        if got.entries:
            jobs = await self.directory.enrich(got.entries)
            for e in got.entries:
                self._deliver((e, jobs.get(e.job_id) if e.job_id is not None else None))
            after = got.entries[-1].position
        if got.more:
            return after
        if got.held:
            await asyncio.sleep(0.002)
        else:
            await self.reader.wait(after)
        return after

    def _deliver(self, item: Item) -> None:
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.overflowed = True
                self.subscribers.discard(sub)


HUB = web.AppKey("events_hub", Hub)


def install(app: web.Application, wiring: Wiring) -> None:
    app[HUB] = Hub(wiring)

    async def close(app: web.Application) -> None:
        await app[HUB].close()

    app.on_cleanup.append(close)
    app.add_routes(routes)


def frame(e: Entry, job: JobInfo | None) -> bytes:
    return b"".join((b"id: ", e.event_id.encode(), b"\nevent: ", e.type.encode(),
                     b"\ndata: ", orjson.dumps(enriched(e, job)), b"\n\n"))


async def _filter(request: web.Request) -> Filter:
    """The query's filters, checked before anything is streamed (a 4xx, not a broken stream)."""
    q = request.query
    try:
        types = check_types(t.strip() for t in ",".join(q.getall("types", [])).split(",")
                            if t.strip())
        where = parse_where(q.getall("where", []))
    except PositionError as e:
        raise RequestError(400, "invalid_query", str(e)) from e
    owner = principal(request).owner
    worker = query_text(q, "worker")
    job_ids: frozenset[int] | None = None
    array_id: int | None = None
    if "job" in q:
        try:
            ref = parse_ref(q["job"])
        except SpecError as e:
            raise RequestError(400, "invalid_query", str(e)) from e
        if ref.id > MAX_ID:
            raise RequestError(400, "invalid_query", f"job id {ref.id} is out of range")
        jobs = state(request).jobs
        job = await (jobs.get(ref.id, owner=owner) if ref.index is None
                     else jobs.element(ref.id, ref.index, owner=owner))
        if job is None:
            raise RequestError(404, "not_found", f"job {ref} does not exist")
        job_ids = frozenset({job.id})
        if ref.index is None and job.array_job_id == job.id:
            array_id = job.id
    return Filter(types=frozenset(types), job_ids=job_ids, array_id=array_id, worker=worker,
                  owner=owner, where=where)


def _start(request: web.Request) -> Start:
    resume = request.headers.get("Last-Event-ID", "").strip()
    try:
        if resume:
            return Start(position=Position.parse(resume))
        return Start.parse(request.query.get("from"))
    except PositionError as e:
        raise RequestError(400, "invalid_query", str(e)) from e


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    flt = await _filter(request)
    start = _start(request)
    follow = request.query.get("follow", "1") not in ("0", "false", "no")
    g = state(request)
    hub = request.app[HUB]
    reader = StreamReader(g.redis, g.keys, sorted(flt.types))
    throttle = request.app[THROTTLE]
    # the slot first: a stream refused (429/503) costs no Redis read
    with throttle.streams.hold(principal(request).token_id):
        after = await reader.resolve(start)  # before the headers: a failure here is a 503
        until = None if follow else await reader.end()
        deadline = asyncio.get_running_loop().time() + throttle.follow_max_s
        resp = LongResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                     "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sub = hub.subscribe() if follow else None
        try:
            # the start as an id: a client that drops before any event resumes from here
            await resp.write(f"retry: {RETRY_MS}\nid: {after.token()}\n\n".encode())
            after = await _history(resp, reader, directory=hub.directory, flt=flt, after=after,
                                   until=until)
            if sub is not None:
                await _live(request, resp, hub=hub, sub=sub, flt=flt, after=after,
                            deadline=deadline)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away: nothing to tell it
        except RedisError as e:
            await _unavailable(resp, e)
        except UNAVAILABLE as e:
            await _unavailable(resp, e)
        finally:
            if sub is not None:
                hub.unsubscribe(sub)
        return resp


async def _unavailable(resp: web.StreamResponse, e: BaseException) -> None:
    """The headers are sent: say why in a comment and end; the client resumes from its id."""
    log.warning("event stream ended: %s", e)
    with contextlib.suppress(ConnectionError):
        await resp.write(b": unavailable, reconnect to resume\n\n")


async def _history(resp: web.StreamResponse, reader: StreamReader, *, directory: JobDirectory,
                   flt: Filter, after: Position, until: Position | None) -> Position:
    """What the streams hold after `after` (up to `until`): read from Redis, not the hub."""
    while True:
        got = await reader.read(after)
        entries = [e for e in got.entries if until is None or e.position <= until]
        if entries:
            jobs = await directory.enrich(entries)
            chunk = b"".join(frame(e, job) for e in entries
                             if flt.matches(e, job := jobs.get(e.job_id or 0)))
            if chunk:
                await resp.write(chunk)
            after = entries[-1].position
        if got.more:
            continue
        if not got.held:
            return after
        await asyncio.sleep(0.002)  # the rest of this millisecond is not final yet


async def _live(request: web.Request, resp: web.StreamResponse, *, hub: Hub,
                sub: Subscription, flt: Filter, after: Position, deadline: float) -> None:
    """The hub's events until the client goes, falls too far behind, or `deadline` (the
    loop's clock) passes."""
    loop = asyncio.get_running_loop()
    last_write = time.monotonic()
    while not sub.overflowed:
        left = deadline - loop.time()
        if left <= 0:
            await resp.write(b": the longest follow is over; reconnect with Last-Event-ID to "
                             b"resume\n\n")
            return
        try:
            item: Item | None = sub.queue.get_nowait()
        except asyncio.QueueEmpty:
            item = await sub.get(within_s=min(1.0, left))
            if client_gone(request):
                return
        if item is None:
            if time.monotonic() - last_write >= hub.keepalive_s:
                await resp.write(b": keep-alive\n\n")
                last_write = time.monotonic()
            continue
        e, job = item
        if e.position <= after:  # the history read already sent it
            continue
        after = e.position
        if flt.matches(e, job):
            await resp.write(frame(e, job))
            last_write = time.monotonic()
    await resp.write(b": too slow to keep up; reconnect with Last-Event-ID to resume\n\n")


@routes.get("/api/v1/streams")
async def streams(request: web.Request) -> web.Response:
    """Each consumer group's lag and pending entries (admin): why is nothing moving?"""
    require_admin(request)
    g = state(request)
    groups = await stream_groups(g.redis, g.keys)
    return json({"types": list(TYPES), "items": [asdict(x) for x in groups]})
