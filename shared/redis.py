"""The Redis client every service uses.

redis-py retries a command after a connection error or timeout (here: 3 times with jittered
exponential backoff). A retried command may already have run once, which is why every Lua script
of ours is safe to run twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# Longest BLOCK a consumer uses; the socket timeout must exceed it.
MAX_BLOCK_MS = 2_000

# Every Redis connection pool of ours (this client, the executor's arq pool in
# shared/dispatch.py): connecting and any one reply have a limit, and a connection idle for
# HEALTH_CHECK_S is checked with a PING before it is used again.
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = MAX_BLOCK_MS / 1000 + 8
HEALTH_CHECK_S = 15


def connect(url: str, *, name: str = "scns", max_connections: int = 64) -> Redis:
    """A client with decoded (str) responses; no I/O happens until the first command."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        client_name=name,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S,
        max_connections=max_connections,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return client


async def aw(result: Awaitable[T] | T) -> T:
    """Await a redis-py command result; its stubs type async commands as `Awaitable[T] | T`."""
    if inspect.isawaitable(result):
        return await cast(Awaitable[T], result)
    return result
