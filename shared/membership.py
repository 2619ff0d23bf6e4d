"""Worker membership in Redis: leases written by workers, records owned by the registry.

A worker's heartbeat client keeps a lease (`worker:{id}`, TTL = SCNS_WORKER_TTL_S) holding its
incarnation (a fresh id per process start) and capacity. The registry compares leases with its
member records and announces each change with a Lua script that re-checks the condition, updates
the record and appends the event in one atomic step: with several registry replicas racing, each
join and each departure is announced exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.events import WorkerJoined, WorkerLeft
from shared.keys import Keys
from shared.lua import Scripts
from shared.redis import aw
from shared.states import WorkerState

LEASE_FIELDS = ("incarnation", "hostname", "cpus", "memory_mb", "labels", "heartbeat_at",
                "started_at", "bye")
MEMBER_FIELDS = ("incarnation", "state", "cpus", "memory_mb", "hostname", "labels", "joined_at",
                 "left_at", "left_reason")
LIVE_STATES = (WorkerState.READY, WorkerState.DRAINING)


def _labels(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    value = orjson.loads(raw)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _int(raw: str | None) -> int:
    return int(raw) if raw else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    worker_id: str
    incarnation: str
    hostname: str
    cpus: int
    memory_mb: int
    labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_at: int = 0
    started_at: int = 0
    bye: bool = False

    @classmethod
    def parse(cls, worker_id: str, values: Sequence[str | None]) -> Lease | None:
        v = dict(zip(LEASE_FIELDS, values, strict=True))
        if not v["incarnation"]:
            return None
        return cls(worker_id=worker_id, incarnation=v["incarnation"],
                   hostname=v["hostname"] or "", cpus=_int(v["cpus"]),
                   memory_mb=_int(v["memory_mb"]), labels=_labels(v["labels"]),
                   heartbeat_at=_int(v["heartbeat_at"]), started_at=_int(v["started_at"]),
                   bye=v["bye"] == "1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    worker_id: str
    incarnation: str
    state: str
    cpus: int
    memory_mb: int
    hostname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    joined_at: int = 0
    left_at: int = 0
    left_reason: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @classmethod
    def parse(cls, worker_id: str, values: Sequence[str | None]) -> Member | None:
        v = dict(zip(MEMBER_FIELDS, values, strict=True))
        if not v["incarnation"] or not v["state"]:
            return None
        return cls(worker_id=worker_id, incarnation=v["incarnation"], state=v["state"],
                   cpus=_int(v["cpus"]), memory_mb=_int(v["memory_mb"]),
                   hostname=v["hostname"] or "", labels=_labels(v["labels"]),
                   joined_at=_int(v["joined_at"]), left_at=_int(v["left_at"]),
                   left_reason=v["left_reason"] or "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """One worker id as the registry sees it: the worker's lease and the registry's record."""

    worker_id: str
    lease: Lease | None
    member: Member | None


class Membership:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts or Scripts(redis)

    # --- the worker's side ---------------------------------------------------------------
    async def heartbeat(
        self, *, worker_id: str, incarnation: str, hostname: str, cpus: int, memory_mb: int,
        labels: Mapping[str, str], ttl_ms: int, now_ms: int,
    ) -> int:
        """1 refreshed, 0 (re)created, -1 the id belongs to a live process on another host."""
        result: int = await self.scripts.run(
            "heartbeat",
            [self.keys.worker_lease(worker_id), self.keys.workers_known],
            [worker_id, incarnation, hostname, cpus, memory_mb,
             orjson.dumps(dict(labels)).decode(), ttl_ms, now_ms],
        )
        return result

    async def deregister(self, *, worker_id: str, incarnation: str, ttl_ms: int) -> bool:
        marked: int = await self.scripts.run(
            "deregister", [self.keys.worker_lease(worker_id)], [incarnation, ttl_ms]
        )
        return marked == 1

    # --- the registry's side -------------------------------------------------------------
    async def observe(self) -> list[Observed]:
        """Every worker id that has a lease or a live record, with both sides."""
        known, live = await self._ids()
        return await self.observe_ids(known | live)

    async def observe_ids(self, worker_ids: Iterable[str]) -> list[Observed]:
        """These worker ids, each with its lease and its record (either may be None)."""
        ids = sorted(worker_ids)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hmget(self.keys.worker_lease(wid), list(LEASE_FIELDS))
                pipe.hmget(self.keys.member(wid), list(MEMBER_FIELDS))
            replies: list[Any] = await pipe.execute()
        return [
            Observed(worker_id=wid, lease=Lease.parse(wid, replies[2 * i]),
                     member=Member.parse(wid, replies[2 * i + 1]))
            for i, wid in enumerate(ids)
        ]

    async def ids(self) -> tuple[set[str], set[str]]:
        """The worker ids Redis knows (with a lease), and those it has live records of."""
        return await self._ids()

    async def _ids(self) -> tuple[set[str], set[str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.workers_known)
            pipe.smembers(self.keys.workers_live)
            known, live = await pipe.execute()
        return set(known), set(live)

    async def join(self, lease: Lease, *, now_ms: int) -> tuple[int, WorkerJoined]:
        """Announce `lease`'s incarnation. Returns (1, event) when this call announced it,
        (0, event) when there was nothing to do, (-1, event) when an older incarnation is still
        live and must be announced as left first."""
        event = WorkerJoined(
            worker_id=lease.worker_id, incarnation=lease.incarnation, hostname=lease.hostname,
            cpus=lease.cpus, memory_mb=lease.memory_mb, labels=dict(lease.labels),
        )
        k = self.keys
        wid = lease.worker_id
        result: int = await self.scripts.run(
            "worker_join",
            [k.worker_lease(wid), k.member(wid), k.workers_live, k.workers_drained,
             k.total_cpus, k.total_memory_mb, k.stream(WorkerJoined.TYPE)],
            [wid, lease.incarnation, event.encode(), now_ms],
        )
        return result, event

    async def leave(self, member: Member, *, reason: str, now_ms: int) -> WorkerLeft | None:
        """Announce that `member`'s incarnation left; None when the condition for `reason` no
        longer holds or another registry replica announced it already."""
        event = WorkerLeft(worker_id=member.worker_id, incarnation=member.incarnation,
                           reason=reason)
        k = self.keys
        wid = member.worker_id
        result = await self.scripts.run(
            "worker_leave",
            [k.worker_lease(wid), k.member(wid), k.workers_live, k.workers_known,
             k.total_cpus, k.total_memory_mb, k.stream(WorkerLeft.TYPE)],
            [wid, member.incarnation, reason, event.encode(), now_ms],
        )
        return event if result == 1 else None

    async def retire(self, worker_id: str) -> bool:
        k = self.keys
        done: int = await self.scripts.run(
            "worker_retire", [k.worker_lease(worker_id), k.member(worker_id), k.workers_known],
            [worker_id],
        )
        return done == 1

    async def set_drain(self, worker_id: str, drain: bool) -> str:
        """Set or clear the drain flag; returns the worker's state afterwards ('' if unknown)."""
        state: str = await self.scripts.run(
            "worker_drain", [self.keys.member(worker_id), self.keys.workers_drained],
            [worker_id, "1" if drain else "0"],
        )
        return state

    async def member(self, worker_id: str) -> Member | None:
        values = await aw(self.redis.hmget(self.keys.member(worker_id), list(MEMBER_FIELDS)))
        return Member.parse(worker_id, values)

    async def members(self) -> list[Member]:
        """Every worker the registry has a record of (live or down)."""
        observed = await self.observe()
        return [o.member for o in observed if o.member is not None]

    async def live_members(self) -> list[Member]:
        live = sorted(await aw(self.redis.smembers(self.keys.workers_live)))
        if not live:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in live:
                pipe.hmget(self.keys.member(wid), list(MEMBER_FIELDS))
            replies = await pipe.execute()
        out = [Member.parse(wid, r) for wid, r in zip(live, replies, strict=True)]
        return [m for m in out if m is not None and m.live]
