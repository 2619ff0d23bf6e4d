"""Lua scripts, kept as `.lua` files beside this module and run through redis-py's Script.

redis-py's Script sends EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), loads the body
and retries, so callers never see a missing script.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

NAMES = (
    "allocate",
    "release",
    "stream_trim",
    "dead_letter",
    "heartbeat",
    "deregister",
    "worker_join",
    "worker_leave",
    "worker_retire",
    "worker_drain",
    "enqueue",
    "claim",
    "restore",
    "record",
    "recount",
    "publish",
)


@cache
def source(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The scripts registered on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in NAMES
        }

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    def script(self, name: str) -> AsyncScript:
        return self._scripts[name]
