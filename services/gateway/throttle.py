"""The gateway under abusive load: a request rate per caller, a cap on open streams, and the
gauges that show what it is holding.

**Request rate.** A token bucket per caller: per token for an authenticated request, per client
address for the others (the public routes, and every token lookup that misses the token cache,
so that a client trying tokens at random costs PostgreSQL at most the address's rate). A bucket
holds `SCNS_RATE_LIMIT_BURST` requests and refills at `SCNS_RATE_LIMIT_RPS` a second (an admin
token's requests count a tenth: ADMIN_RATE_FACTOR). An empty one answers 429 with `Retry-After`
(the seconds until a request will pass) after a pause of up to a second (`Tarpit`: a closed
loop that ignores Retry-After is slowed to the pace of its answers instead of making the
refusals the load). A listing costs one more request per PAGE_ROWS_PER_REQUEST rows it asks for
and a body one more per BODY_BYTES_PER_REQUEST (`charge`), so that the rate bounds work, not
just requests. `/healthz`, `/readyz` and `/metrics` are never limited. The buckets live in this
process: each gateway replica limits what it serves, so behind N replicas a caller gets up to N
times the rate. The client address is the TCP peer's (a proxy in front makes every caller one
address: give it its own limits, or a generous SCNS_RATE_LIMIT_BURST).

**Streams.** A log follow or an event stream holds a slot for as long as it is open: at most
`SCNS_MAX_STREAMS` per gateway process (beyond: 503 with `Retry-After`) and
`SCNS_MAX_STREAMS_PER_TOKEN` per token (beyond: 429). Each ends after `SCNS_FOLLOW_MAX_S` (an
event stream can be resumed with `Last-Event-ID`), as soon as its client has gone, and when its
client stops reading (a write not taken within 30 s: common.LongResponse hangs up).

**Listings.** At most LISTINGS_AT_ONCE listing queries run in PostgreSQL at once per gateway
process; the others wait for a turn without holding a connection (up to
`SCNS_DB_ACQUIRE_TIMEOUT_S`, then 503 with `Retry-After`). A burst of full pages then cannot
take the whole pool and leave a point read (`GET /jobs/{id}`, a token lookup) or a submit
queued behind hundreds of rows.

**Gauges** (the gateway's `/metrics`): `scns_gateway_connections` (open client connections),
`scns_gateway_tasks` (asyncio tasks in this process, counted at scrape time),
`scns_gateway_streams` (streams open) and `scns_gateway_refusals_total{reason}` (requests
turned away: rate_limit, streams_per_token, streams, db_pool, postgresql, redis). After a burst
of abuse, the first three return to their baseline once the abusers have gone.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from services.gateway.common import PRINCIPAL, Principal
from services.gateway.validation import RequestError, query_limit
from shared.errors import PoolBusy
from shared.settings import Settings

MAX_KEYS = 100_000  # buckets kept (least recently used out first: it comes back full)
STREAMS_RETRY_AFTER_S = 5  # a stream's slot frees when some stream ends: no telling when

REFUSALS = MetricCounter("scns_gateway_refusals_total",
                         "Requests the gateway turned away for load or an unavailable store",
                         ["reason"])
STREAMS = Gauge("scns_gateway_streams", "Log follows and event streams open in this process")

_SERVERS: weakref.WeakSet[web.Server] = weakref.WeakSet()


def _connections() -> int:
    return sum(len(s.connections) for s in list(_SERVERS))


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the event loop (not by the gateway's /metrics)
        return 0


Gauge("scns_gateway_connections", "Client connections open to this gateway process") \
    .set_function(_connections)
Gauge("scns_gateway_tasks", "asyncio tasks in this gateway process").set_function(_tasks)


def watch(server: web.Server | None) -> None:
    """Count this server's connections in `scns_gateway_connections` (the entry point calls
    it once its runner is set up; the app alone cannot see its server)."""
    if server is not None:
        _SERVERS.add(server)


def refuse(status: int, code: str, message: str, *, retry_after_s: float, reason: str
           ) -> RequestError:
    """A refusal for load (429 or 503) with its `Retry-After`, counted by reason."""
    REFUSALS.labels(reason).inc()
    return RequestError(status, code, message, retry_after_s=max(1, math.ceil(retry_after_s)))


# --- the request rate ----------------------------------------------------------------------
@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


def take(bucket: Bucket, now: float, *, rate: float, burst: int, cost: float = 1.0) -> float:
    """Take `cost` tokens (one request's worth by default) from `bucket` at time `now`
    (seconds): 0.0 when they were there, else the seconds until they will be (nothing is taken
    then). The bucket refills at `rate` a second up to `burst`; a cost above the burst is
    charged as the burst (else it could never pass)."""
    cost = min(cost, float(burst))
    elapsed = max(0.0, now - bucket.updated)
    bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)
    bucket.updated = max(now, bucket.updated)
    if bucket.tokens >= cost:
        bucket.tokens -= cost
        return 0.0
    return (cost - bucket.tokens) / rate


class RateLimiter:
    """A bucket per key, in this process's memory; `rate` 0 turns limiting off."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0: the request may go on; else the seconds until one of `key`'s would."""
        if self.rate <= 0 or cost <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(tokens=float(self.burst), updated=now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return take(bucket, now, rate=self.rate, burst=self.burst, cost=cost)

    def check(self, key: str, *, who: str, cost: float = 1.0, what: str = "") -> None:
        """Raise the 429 when `key` has not `cost` requests' worth left (`who`: whose limit;
        `what`: why this request costs more than one, for the message)."""
        wait = self.take(key, cost)
        if wait:
            raise refuse(429, "rate_limited",
                         f"too many requests: at most {self.rate:g} a second ({self.burst} at "
                         f"once) {who}{what}; retry in {math.ceil(wait)} s",
                         retry_after_s=wait, reason="rate_limit")


# What a request costs beyond the one every request pays, in requests: a full page is about
# what it takes to serve 10 small requests; a maximum-size submission (1 MiB) 16 more.
PAGE_ROWS_PER_REQUEST = 20
BODY_BYTES_PER_REQUEST = 64 * 1024


ADMIN_RATE_FACTOR = 10  # an admin token's rate and burst are this many times a user's


def request_cost(who: Principal, cost: float) -> float:
    """What `cost` requests take from `who`'s bucket: admins' requests cost a tenth (the
    operators' tools and automation; a user token is what gets handed around)."""
    return cost / ADMIN_RATE_FACTOR if who.admin else cost


def page_limit(request: web.Request) -> int:
    """A listing's `limit` (validation.query_limit), its extra cost charged."""
    limit = query_limit(request.query)
    charge(request, limit // PAGE_ROWS_PER_REQUEST, f"a page of {limit}")
    return limit


def listing_turn(request: web.Request) -> AbstractAsyncContextManager[None]:
    """A turn to run a listing's query (Turns: LISTINGS_AT_ONCE per process)."""
    return request.app[THROTTLE].listings.turn()


def charge(request: web.Request, cost: float, what: str) -> None:
    """Charge an expensive request's extra cost to its caller's bucket (the one the auth
    middleware took its first request from): a 429 when it is not there. Calls that serve
    many rows, or carry a large body, then count as many requests, so a token's rate bounds
    the work it can ask for and not only the number of its requests."""
    who = request.get(PRINCIPAL)
    if who is None or cost <= 0:
        return
    request.app[THROTTLE].requests.check(f"token:{who.token_id}", who="per token",
                                         cost=request_cost(who, cost),
                                         what=f" ({what} counts as {cost:g} more)")


# --- streams -------------------------------------------------------------------------------
class StreamSlots:
    """How many streams are open, in all and per token."""

    def __init__(self, total: int, per_token: int) -> None:
        self.total = total
        self.per_token = per_token
        self.open = 0
        self._by_token: Counter[str] = Counter()

    @contextmanager
    def hold(self, token_id: str) -> Iterator[None]:
        """A slot for the duration of the block; a 503 (all taken) or 429 (the token's)."""
        if self.open >= self.total:
            raise refuse(503, "overloaded", f"this gateway has {self.total} streams open, its "
                         "most; retry shortly", retry_after_s=STREAMS_RETRY_AFTER_S,
                         reason="streams")
        if self._by_token[token_id] >= self.per_token:
            raise refuse(429, "too_many_streams", f"this token has {self.per_token} streams "
                         "open on this gateway, its most; close one first",
                         retry_after_s=STREAMS_RETRY_AFTER_S, reason="streams_per_token")
        self.open += 1
        self._by_token[token_id] += 1
        STREAMS.inc()
        try:
            yield
        finally:
            self.open -= 1
            self._by_token[token_id] -= 1
            if not self._by_token[token_id]:
                del self._by_token[token_id]
            STREAMS.dec()


class Tarpit:
    """A 429 is answered after a pause (up to `max_s`, at most its Retry-After): a client that
    ignores Retry-After and asks again at once, in a closed loop, would otherwise make the
    refusals themselves the load (tens of thousands a second, a core of this process). At most
    `most` answers wait at a time; beyond that they go at once, so the pause never holds more
    than that many connections."""

    def __init__(self, max_s: float, most: int) -> None:
        self.max_s = max_s
        self.most = most
        self.waiting = 0

    async def pause(self, retry_after_s: float | None) -> None:
        if self.max_s <= 0 or self.waiting >= self.most:
            return
        self.waiting += 1
        try:
            await asyncio.sleep(min(self.max_s, retry_after_s or self.max_s))
        finally:
            self.waiting -= 1


TARPIT_S = 1.0
TARPIT_MOST = 1000
LISTINGS_AT_ONCE = 4  # listing queries in PostgreSQL at once (of the gateway's 20 connections)


class Turns:
    """At most `most` holders at once; a wait longer than `within_s` is PoolBusy (a 503 with
    Retry-After, like a pool with no connection free)."""

    def __init__(self, most: int, within_s: float) -> None:
        self.most = most
        self.within_s = within_s
        self._slots = asyncio.Semaphore(most)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.within_s):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolBusy(f"no turn for a listing within {self.within_s:g} s "
                           f"({self.most} run at once)") from None
        try:
            yield
        finally:
            self._slots.release()


@dataclass(frozen=True, slots=True, kw_only=True)
class Throttle:
    """One gateway's limits (create_app builds it from the settings)."""

    requests: RateLimiter
    streams: StreamSlots
    follow_max_s: float
    listings: Turns
    tarpit: Tarpit = field(default_factory=lambda: Tarpit(TARPIT_S, TARPIT_MOST))

    @classmethod
    def from_settings(cls, s: Settings) -> Throttle:
        return cls(requests=RateLimiter(s.rate_limit_rps, s.rate_limit_burst),
                   streams=StreamSlots(s.max_streams, s.max_streams_per_token),
                   follow_max_s=s.follow_max_s,
                   listings=Turns(LISTINGS_AT_ONCE, s.db_acquire_timeout_s))


THROTTLE = web.AppKey("throttle", Throttle)
