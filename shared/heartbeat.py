"""The worker side of the registry protocol: register, heartbeat, deregister.

The executor embeds a HeartbeatClient; `python -m shared.heartbeat` runs one on its own (a worker
that offers capacity but runs nothing, useful for tests and for checking a node's set-up).

Each process start is a new *incarnation* (a random id). The lease it keeps in Redis expires
after SCNS_WORKER_TTL_S unless refreshed every SCNS_HEARTBEAT_S. `lease_valid()` tells the owner
whether the cluster can still consider it alive: an executor that cannot renew its lease must
stop starting jobs, because the registry will declare it gone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Mapping

from redis.exceptions import RedisError

from shared import clock
from shared.capacity import Capacity
from shared.errors import WorkerIdConflict
from shared.keys import Keys
from shared.membership import Membership
from shared.redis import aw

log = logging.getLogger(__name__)

BYE_TTL_MS = 600_000


def now_ms() -> int:
    return clock.now_ms()


class HeartbeatClient:
    def __init__(
        self,
        membership: Membership,
        *,
        worker_id: str,
        capacity: Capacity,
        labels: Mapping[str, str],
        heartbeat_s: float,
        ttl_s: float,
        hostname: str | None = None,
    ) -> None:
        self.membership = membership
        self.keys: Keys = membership.keys
        self.worker_id = worker_id
        self.capacity = capacity
        self.labels = dict(labels)
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.hostname = hostname or socket.gethostname()
        self.incarnation = uuid.uuid4().hex[:16]
        self._last_ok: float | None = None
        self._held_since: float | None = None
        self.lease_recreated = 0

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    @property
    def beat_timeout_s(self) -> float:
        """How long one heartbeat may take before it counts as failed (and is retried)."""
        return max(min(self.heartbeat_s, self.ttl_s / 4), 0.5)

    def seconds_since_renewal(self) -> float:
        """Time since the lease was last renewed (infinite before the first heartbeat)."""
        return float("inf") if self._last_ok is None else time.monotonic() - self._last_ok

    def lease_valid(self) -> bool:
        """True while the last successful heartbeat is younger than the TTL."""
        return self._last_ok is not None and time.monotonic() - self._last_ok < self.ttl_s

    def lease_held_since(self, since: float) -> bool:
        """True when the lease has been valid without a break from monotonic time `since` until
        now: the cluster cannot have declared this worker gone in between (a start whose
        answer came back late, after a partition, must not run: shared/fencing.py)."""
        return self._held_since is not None and self._held_since <= since \
            and self.lease_valid()

    async def beat(self) -> int:
        sent = time.monotonic()
        result = await self.membership.heartbeat(
            worker_id=self.worker_id, incarnation=self.incarnation, hostname=self.hostname,
            cpus=self.capacity.cpus, memory_mb=self.capacity.memory_mb, labels=self.labels,
            ttl_ms=self.ttl_ms, now_ms=now_ms(),
        )
        if result < 0:
            raise WorkerIdConflict(
                f"worker id {self.worker_id!r} is held by a live process on another host; "
                "set SCNS_WORKER_ID to a unique name"
            )
        received = time.monotonic()
        if self._last_ok is None or received - self._last_ok >= self.ttl_s:
            # the lease may have lapsed between the previous renewal and this one (Redis ran
            # this one at some moment before `received`): it is held without a break from here
            self._held_since = received
        self._last_ok = sent
        return result

    async def register(self) -> None:
        await self.beat()
        await self._wake()
        log.info("registered", extra={"event": "worker-registered", "worker_id": self.worker_id,
                                      "incarnation": self.incarnation,
                                      "cpus": self.capacity.cpus,
                                      "memory_mb": self.capacity.memory_mb})

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until `stop` is set. Failures are retried sooner, never fatal: the lease
        simply lapses if Redis stays away longer than the TTL."""
        delay = self.heartbeat_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            try:
                # bounded: a beat stuck on a half-open connection (and redis-py's retries)
                # must not hold back the next one once the network is back
                async with asyncio.timeout(self.beat_timeout_s):
                    recreated = await self.beat() == 0
                if recreated:
                    self.lease_recreated += 1
                    log.warning("lease was gone and has been re-created",
                                extra={"event": "lease-recreated", "worker_id": self.worker_id})
                    await self._wake()
                delay = self.heartbeat_s
            except (RedisError, TimeoutError) as e:
                delay = min(self.heartbeat_s, 1.0)
                log.warning("heartbeat failed: %s", e,
                            extra={"event": "heartbeat-failed", "worker_id": self.worker_id,
                                   "lease_valid": self.lease_valid()})

    async def begin_leaving(self) -> None:
        """Stop receiving placements (the allocation script skips a leaving lease) while running
        jobs finish; the registry still counts the worker as live until `deregister`."""
        await aw(self.membership.redis.hset(self.keys.worker_lease(self.worker_id), "leaving",
                                            "1"))

    async def deregister(self) -> None:
        try:
            # The goodbye outlives the TTL so that a registry that is briefly away still
            # announces a shutdown rather than an expiry.
            await self.membership.deregister(worker_id=self.worker_id,
                                             incarnation=self.incarnation,
                                             ttl_ms=max(self.ttl_ms, BYE_TTL_MS))
            await self._wake()
            log.info("deregistered", extra={"event": "worker-deregistered",
                                            "worker_id": self.worker_id})
        except RedisError as e:
            log.warning("could not deregister (the lease will expire instead): %s", e)

    async def _wake(self) -> None:
        """Hint the registry to look now (pub/sub, at most once; it also sweeps on a timer)."""
        await self.membership.redis.publish(self.keys.wakeup("registry"), self.worker_id)


async def _main() -> int:
    from shared import capacity, logs, runtime
    from shared.redis import connect
    from shared.settings import Settings

    settings = Settings.from_env()
    logs.configure("heartbeat", level=settings.log_level, fmt=settings.log_format)
    redis = connect(settings.redis_url, name=f"scns-heartbeat-{settings.worker_id}")
    cap = capacity.detect(settings.worker_cpus, settings.worker_memory_mb)
    client = HeartbeatClient(
        Membership(redis, Keys(settings.key_prefix)), worker_id=settings.worker_id,
        capacity=cap, labels=capacity.default_labels(settings.worker_labels),
        heartbeat_s=settings.heartbeat_s, ttl_s=settings.worker_ttl_s,
    )
    stop = asyncio.Event()
    runtime.stop_on_signals(stop)
    try:
        await client.register()
        await client.run(stop)
    finally:
        await client.deregister()
        await redis.aclose()
    return 0


def main() -> int:
    from shared import runtime

    return runtime.run(_main)


if __name__ == "__main__":
    raise SystemExit(main())
