"""What the consumer groups of the event streams have yet to do: lag, pending entries, age.

Read-only and cheap (a few pipelined round trips): the gateway's `/metrics` gauges and
`scns tail --lag` both use it. It covers the event-type streams (one per type in
shared/events.EVENT_TYPES, `Keys.stream(type)`) and the workers' control streams
(`Keys.control(worker)`, found with SCAN). A stream that does not exist, and one that has no
group, is simply absent from the answer.

`lag` is Redis's own (XINFO GROUPS, Redis >= 7.0): entries added to the stream that the group
has not been delivered yet; Redis cannot always tell (after an XDEL in the range the group has
still to read, or for a group created at an arbitrary id), and then it is None. `pending` are
entries delivered to a consumer but not yet acknowledged; `oldest_pending_s` is the age of the
oldest of them, from its entry id's time (Redis's clock when it was added) against Redis's
clock now (TIME), so the caller's clock plays no part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.events import EVENT_TYPES
from shared.keys import Keys

CONTROL = "control:"
SCAN_COUNT = 1000


@dataclass(frozen=True, slots=True)
class GroupInfo:
    stream: str          # the full key, e.g. "{scns}:stream:job-finished"
    name: str            # the stream's short name: the event type, or "control:<worker>"
    group: str
    consumers: int
    pending: int         # entries delivered but not acknowledged (XINFO GROUPS "pending")
    lag: int | None      # entries not yet delivered to the group (None when Redis cannot tell)
    oldest_pending_s: float | None  # age of the oldest pending entry, None if none pending
    last_delivered_id: str


def entry_ms(entry_id: str) -> int:
    """The millisecond time part of a stream entry id (`1718000000000-3`)."""
    return int(entry_id.partition("-")[0])


async def streams(redis: Redis, keys: Keys) -> list[tuple[str, str]]:
    """(short name, key) of every stream to look at: each event type's, and each control
    stream that exists (whether the event-type ones exist is left to the caller)."""
    out = [(t, keys.stream(t)) for t in sorted(EVENT_TYPES)]
    control_prefix = keys.control("")
    pattern = keys.pattern()[:-1] + "stream:control:*"
    found: set[str] = set()
    async for key in redis.scan_iter(match=pattern, count=SCAN_COUNT, _type="stream"):
        found.add(key)
    out += [(CONTROL + key[len(control_prefix):], key) for key in sorted(found)]
    return out


async def stream_groups(redis: Redis, keys: Keys) -> list[GroupInfo]:
    """Every consumer group of the event-type and control streams, sorted by (name, group)."""
    named = await streams(redis, keys)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        for _, key in named:
            pipe.xinfo_groups(key)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    now = replies[0]
    if isinstance(now, BaseException):
        raise now
    now_ms = int(now[0]) * 1000 + int(now[1]) / 1000
    found: list[tuple[str, str, dict[str, Any]]] = []
    for (name, key), reply in zip(named, replies[1:], strict=True):
        if isinstance(reply, ResponseError) and "no such key" in str(reply).lower():
            continue  # this stream does not exist (yet, or any more)
        if isinstance(reply, BaseException):
            raise reply
        found += [(name, key, g) for g in reply]
    oldest = await _oldest_pending(redis, [(key, str(g["name"])) for _, key, g in found
                                           if int(g["pending"])])
    out = [
        GroupInfo(
            stream=key, name=name, group=str(g["name"]), consumers=int(g["consumers"]),
            pending=int(g["pending"]), lag=None if g.get("lag") is None else int(g["lag"]),
            oldest_pending_s=(max(0.0, (now_ms - entry_ms(oldest[key, str(g["name"])])) / 1000)
                              if (key, str(g["name"])) in oldest else None),
            last_delivered_id=str(g["last-delivered-id"]),
        )
        for name, key, g in found
    ]
    out.sort(key=lambda i: (i.name, i.group))
    return out


async def _oldest_pending(redis: Redis, groups: Sequence[tuple[str, str]]
                          ) -> dict[tuple[str, str], str]:
    """(stream, group) -> the id of the group's oldest pending entry (XPENDING's summary)."""
    if not groups:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for key, group in groups:
            pipe.xpending(key, group)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    out: dict[tuple[str, str], str] = {}
    for sg, reply in zip(groups, replies, strict=True):
        if isinstance(reply, ResponseError):
            continue  # the stream or the group went away between the two round trips
        if isinstance(reply, BaseException):
            raise reply
        if reply and reply.get("min"):
            out[sg] = str(reply["min"])
    return out
