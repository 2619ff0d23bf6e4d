"""Single flight: concurrent askers of one key share the one call in flight.

A thousand requests that miss a cache at the same moment (a token's entry expiring under load,
the progress of a job a thousand clients follow) would otherwise make a thousand identical
PostgreSQL queries, queue for the pool, and hold up every other request behind them. The call
runs as a task of its own: an asker that goes away (its client hung up) leaves it running for
the others, and its failure reaches every asker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}

    def flying(self, key: K) -> bool:
        """Whether a call for `key` is in flight (joining it costs nothing more)."""
        return key in self._flights

    async def do(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """`call()`'s answer, from the call in flight for `key` if there is one."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(call())
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        return await asyncio.shield(flight)

    def _landed(self, key: K, flight: asyncio.Future[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: with no asker left, a failure is not logged
