"""Wake-up hints: a pub/sub channel a service listens on to act now rather than at its next
timer tick. At most once: nothing may depend on a hint arriving (the timer is the safety net)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._event = asyncio.Event()
        self.messages: list[str] = []

    def set(self) -> None:
        self._event.set()

    def take(self) -> list[str]:
        """Clear the flag and return the messages received since the last call."""
        self._event.clear()
        taken, self.messages = self.messages, []
        return taken

    async def wait(self, stop: asyncio.Event, at_most_s: float) -> None:
        """Until a hint arrives, `stop` is set, or `at_most_s` passes."""
        waiters = [asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=at_most_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def listen(self, stop: asyncio.Event) -> None:
        """Subscribe and set the flag on every message, reconnecting after Redis errors.

        The client's socket timeout (shared/redis.py) bounds every read, this subscription's
        too: a channel quiet that long times out, and is subscribed to again at once (a dead
        connection is found out the same way)."""
        while not stop.is_set():
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(self.channel)
                    async for message in ps.listen():
                        data = message.get("data")
                        if isinstance(data, str) and data:
                            self.messages.append(data)
                        self._event.set()
            except RedisTimeoutError:
                continue
            except RedisError as e:
                log.debug("wake-up listener reconnecting: %s", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
