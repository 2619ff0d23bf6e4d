"""A process's parts, built once at its entry point and handed down (STYLE: wire once).

Keys, the Lua scripts (registered once per Redis client), membership, capacity, dispatch, the
event bus, the stores and the lifecycle: every service takes what it needs from one Wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis

from shared.allocation import Allocator
from shared.bus import StreamBus
from shared.db.jobs import JobStore
from shared.dispatch import ArqDispatcher
from shared.keys import Keys
from shared.lifecycle import Lifecycle
from shared.lua import Scripts
from shared.membership import Membership
from shared.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Wiring:
    settings: Settings
    redis: Redis
    pool: asyncpg.Pool[Any]
    keys: Keys
    scripts: Scripts
    membership: Membership
    allocator: Allocator
    dispatcher: ArqDispatcher
    bus: StreamBus
    jobs: JobStore
    lifecycle: Lifecycle

    @classmethod
    def build(cls, settings: Settings, redis: Redis, pool: asyncpg.Pool[Any]) -> Wiring:
        """Pure construction: no I/O happens until a part is used."""
        keys = Keys(settings.key_prefix)
        scripts = Scripts(redis)
        allocator = Allocator(redis, keys, scripts)
        dispatcher = ArqDispatcher(redis, keys, scripts)
        bus = StreamBus(redis, keys, maxlen=settings.stream_maxlen, scripts=scripts,
                        dead_letter_maxlen=settings.dead_letter_maxlen)
        return cls(settings=settings, redis=redis, pool=pool, keys=keys, scripts=scripts,
                   membership=Membership(redis, keys, scripts), allocator=allocator,
                   dispatcher=dispatcher, bus=bus, jobs=JobStore(pool),
                   lifecycle=Lifecycle(pool=pool, redis=redis, keys=keys, allocator=allocator,
                                       dispatcher=dispatcher, bus=bus))
