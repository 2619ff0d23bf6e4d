"""The event bus on Redis Streams: publish, consume through a group, reclaim, dead-letter.

Delivery is at least once. A consumer acknowledges an entry only after its handler returned, so
an entry whose handler crashed stays pending and is reclaimed (XAUTOCLAIM) by any consumer of the
group once it has been idle for `claim_idle_ms`. An entry delivered more than `max_deliveries`
times, or one that cannot be decoded, is moved to the dead-letter stream instead of being handed
to the handler again. Handlers must be idempotent; on top of that the consumer remembers the
event ids it has applied (per group, for `dedupe_ttl_s`) and acknowledges a repeat without
calling the handler, so an event published twice is applied once. A consumer whose events are
mere wake-ups can turn that off (`dedupe=False`). Entries are handled in batches: one round
trip for the duplicate check and one for the acknowledgements per batch.

Streams are trimmed towards `maxlen`, but never past an entry some group still needs. The
dead-letter stream, which no group reads, is trimmed to about `dead_letter_maxlen` with every
entry added to it (oldest first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.errors import EventDecodeError
from shared.events import FIELD, Event, decode
from shared.keys import Keys
from shared.lua import Scripts

log = logging.getLogger(__name__)

FIELD_NAME = FIELD.decode()
TRIM_EVERY = 256
TRIM_STEP = 10_000
BATCH = 1_000  # events per publish.lua call: one call holds Redis for its duration (~1 ms)
DEAD_LETTER_MAXLEN = 10_000  # the default of SCNS_DEAD_LETTER_MAXLEN


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """Where an event came from: its stream entry and how often it has been delivered."""

    stream: str
    entry_id: str
    deliveries: int


Handler = Callable[[Event, Delivery], Awaitable[None]]


def consumer_name(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class StreamBus:
    """Publishing side, plus stream maintenance (groups, trimming)."""

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = 100_000,
                 scripts: Scripts | None = None,
                 dead_letter_maxlen: int = DEAD_LETTER_MAXLEN) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.dead_letter_maxlen = dead_letter_maxlen
        self.scripts = scripts or Scripts(redis)
        self._since_trim: dict[str, int] = {}

    async def publish(self, event: Event) -> str:
        """Append one event; returns its stream entry id."""
        stream = self.keys.stream(event.TYPE)
        entry_id: str = await self.redis.xadd(stream, {FIELD_NAME: event.encode()})
        await self._count_and_trim(stream, 1)
        return entry_id

    async def publish_to(self, stream: str, event: Event) -> str:
        """Append one event to an explicit stream (e.g. a worker's control stream)."""
        entry_id: str = await self.redis.xadd(stream, {FIELD_NAME: event.encode()})
        await self._count_and_trim(stream, 1)
        return entry_id

    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Append events, each to its type's stream, in order; returns their entry ids. A batch
        (the scheduler's page of job-allocated events) is one publish.lua call per BATCH events,
        not a command per event: the same entries, for a fraction of the client's work. The
        call also says how long each stream now is, and a stream is trimmed only when that is
        past `maxlen` (counting towards TRIM_EVERY instead put a trim's round trip into every
        page's commit, with nothing to trim)."""
        if len(events) == 1:
            return [await self.publish(events[0])]  # one command: no script to run
        script = self.scripts.script("publish")
        ids: list[str] = []
        long: set[str] = set()
        for i in range(0, len(events), BATCH):
            keys, args = self._batch(events[i:i + BATCH])
            added, lengths = await script(keys=keys, args=args)
            ids += added
            long.update(k for k, n in zip(keys, lengths, strict=True) if int(n) > self.maxlen)
        for stream in long:
            await self.trim(stream)
        return ids

    def _batch(self, events: Sequence[Event]) -> tuple[list[str], list[Any]]:
        """publish.lua's keys and arguments: each stream named once, the events in one
        argument."""
        at: dict[str, int] = {}  # stream -> its position (1-based) among the keys
        lines = [b"%d %s\n" % (at.setdefault(self.keys.stream(e.TYPE), len(at) + 1), e.encode())
                 for e in events]
        return list(at), [FIELD_NAME, b"".join(lines)]

    def publish_in(self, pipe: Pipeline, event: Event) -> None:
        """Queue one event on a pipeline (or MULTI) the caller executes."""
        pipe.xadd(self.keys.stream(event.TYPE), {FIELD_NAME: event.encode()})

    async def published(self, events: Iterable[Event]) -> None:
        """Tell the trimmer about events queued with `publish_in` once they were executed."""
        counts: dict[str, int] = {}
        for e in events:
            stream = self.keys.stream(e.TYPE)
            counts[stream] = counts.get(stream, 0) + 1
        for stream, n in counts.items():
            await self._count_and_trim(stream, n)

    async def _count_and_trim(self, stream: str, n: int) -> None:
        seen = self._since_trim.get(stream, 0) + n
        # reset before awaiting, or every concurrent publisher would trim too
        self._since_trim[stream] = 0 if seen >= TRIM_EVERY else seen
        if seen >= TRIM_EVERY:
            await self.trim(stream)

    async def trim(self, stream: str, maxlen: int | None = None) -> int:
        """Trim towards `maxlen` without dropping an entry a group has not acknowledged."""
        limit = self.maxlen if maxlen is None else maxlen
        removed: int = await self.scripts.run("stream_trim", [stream], [limit, TRIM_STEP])
        return removed

    async def trim_all(self, types: Iterable[str]) -> int:
        total = 0
        for t in types:
            total += await self.trim(self.keys.stream(t))
        return total

    async def ensure_group(self, event_type: str, group: str) -> None:
        """Create the consumer group (and the stream) if missing; a no-op when it exists.

        A new group starts at the beginning of the retained stream: a service started after
        events were published still sees them.
        """
        await self.ensure_stream_group(self.keys.stream(event_type), group)

    async def ensure_stream_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


class Consumer:
    """Reads a set of event types through one consumer group and applies a handler."""

    def __init__(
        self,
        bus: StreamBus,
        *,
        group: str,
        consumer: str,
        types: Sequence[str] = (),
        handler: Handler,
        streams: Sequence[str] = (),
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        block_ms: int = 1_000,
        batch: int = 100,
        dedupe_ttl_s: int = 86_400,
        dedupe: bool = True,
    ) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.keys = bus.keys
        self.group = group
        self.consumer = consumer
        self.streams = [self.keys.stream(t) for t in types] + list(streams)
        self.handler = handler
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self.batch = batch
        self.dedupe_ttl_s = dedupe_ttl_s
        self.dedupe = dedupe
        self._claim_cursor = dict.fromkeys(self.streams, "0-0")
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            await self.bus.ensure_stream_group(stream, self.group)

    async def run(self, stop: asyncio.Event, *, reclaim_every_s: float | None = None) -> None:
        """Consume until `stop` is set: read new entries, and now and then reclaim stale ones."""
        interval = reclaim_every_s or max(self.claim_idle_ms / 2000, 0.1)
        await self.ensure_groups()
        loop = asyncio.get_running_loop()
        next_reclaim = loop.time()
        while not stop.is_set():
            if loop.time() >= next_reclaim:
                await self.reclaim()
                next_reclaim = loop.time() + interval
            await self.read_once(block_ms=self.block_ms)

    async def read_once(self, *, block_ms: int | None = None) -> int:
        """Read and handle one batch of new entries; returns how many were read."""
        try:
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, dict.fromkeys(self.streams, ">"),
                count=self.batch, block=block_ms,
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream or group vanished (a Redis restart without persistence): recreate.
            log.warning("consumer group missing, recreating", extra={"group": self.group})
            await self.ensure_groups()
            return 0
        # A fresh read is the first delivery to this group.
        batch = [(stream, entry_id, fields, 1)
                 for stream, entries in reply or [] for entry_id, fields in entries]
        await self._process_batch(batch)
        return len(batch)

    async def reclaim(self) -> int:
        """Take over entries idle for longer than `claim_idle_ms` (their consumer died or its
        handler failed) and handle them, dead-lettering those delivered too often."""
        n = 0
        for stream in self.streams:
            try:
                cursor, entries, *_ = await self.redis.xautoclaim(
                    stream, self.group, self.consumer, self.claim_idle_ms,
                    start_id=self._claim_cursor[stream], count=self.batch,
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_groups()
                continue
            self._claim_cursor[stream] = cursor
            live = [(eid, fields) for eid, fields in entries if fields is not None]
            if not live:
                continue
            counts = await self._delivery_counts(stream, [eid for eid, _ in live])
            n += len(live)
            await self._process_batch([(stream, eid, fields, counts.get(eid, 1))
                                       for eid, fields in live])
        return n

    async def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for eid in ids:
                pipe.xpending_range(stream, self.group, eid, eid, 1)
            replies = await pipe.execute()
        out: dict[str, int] = {}
        for rows in replies:
            for row in rows:
                out[row["message_id"]] = int(row["times_delivered"])
        return out

    async def _process_batch(self, batch: list[tuple[str, str, dict[str, str], int]]) -> None:
        """Handle entries in order; one round trip for the duplicate check, one for the
        acknowledgements (with the applied-event marks) of the whole batch."""
        if not batch:
            return
        todo = await self._decodable(batch)
        seen: list[int] = [0] * len(todo)
        if self.dedupe and todo:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, _, event, _ in todo:
                    pipe.exists(self.keys.dedup(self.group, event.event_id))
                seen = await pipe.execute()
        acks: dict[str, list[str]] = {}
        applied: list[str] = []
        for (stream, entry_id, event, deliveries), dup in zip(todo, seen, strict=True):
            if dup or event.event_id in applied:
                acks.setdefault(stream, []).append(entry_id)
                log.debug("duplicate event acknowledged without handling",
                          extra={"event_id": event.event_id, "type": event.TYPE})
                continue
            delivery = Delivery(stream=stream, entry_id=entry_id, deliveries=deliveries)
            try:
                await self.handler(event, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Left pending on purpose: it is redelivered after claim_idle_ms.
                self.failed += 1
                log.exception("handler failed; the event will be redelivered",
                              extra={"event_id": event.event_id, "type": event.TYPE,
                                     "group": self.group, "deliveries": deliveries})
                continue
            self.handled += 1
            applied.append(event.event_id)
            acks.setdefault(stream, []).append(entry_id)
        if not acks:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if self.dedupe:
                for event_id in applied:
                    pipe.set(self.keys.dedup(self.group, event_id), "1", ex=self.dedupe_ttl_s)
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            await pipe.execute()

    async def _decodable(self, batch: list[tuple[str, str, dict[str, str], int]]
                         ) -> list[tuple[str, str, Event, int]]:
        """The entries a handler should see; poison and over-delivered ones are dead-lettered."""
        todo: list[tuple[str, str, Event, int]] = []
        for stream, entry_id, fields, deliveries in batch:
            raw = fields.get(FIELD_NAME, "")
            if deliveries > self.max_deliveries:
                await self._dead_letter(stream, entry_id, raw, deliveries,
                                        f"delivered {deliveries} times")
                continue
            try:
                todo.append((stream, entry_id, decode(raw), deliveries))
            except EventDecodeError as e:
                await self._dead_letter(stream, entry_id, raw, deliveries, str(e))
        return todo

    async def _dead_letter(
        self, stream: str, entry_id: str, raw: str, deliveries: int, reason: str
    ) -> None:
        moved = await self.bus.scripts.run(
            "dead_letter", [stream, self.keys.dead_letter],
            [self.group, entry_id, deliveries, reason, raw, self.bus.dead_letter_maxlen],
        )
        if moved:
            self.dead_lettered += 1
            log.error("event moved to the dead-letter stream",
                      extra={"stream": stream, "entry_id": entry_id, "group": self.group,
                             "reason": reason})
