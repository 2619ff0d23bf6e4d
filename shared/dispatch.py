"""Handing an allocated job to its worker: a small interface of ours, implemented with arq.

arq (0.28, maintenance-only) is the transport; nothing outside this module knows. What we learned
from its source and issues, and how we use it:

* The arq task is a short *launch*: win the ALLOCATED -> RUNNING transition, start the process,
  return. The executor's own supervisor watches the process for hours or days, so arq's job
  timeout and its "locked until the longest timeout + 10 s after a crash" stay small.
* Job ids encode `job:attempt` (with our key prefix): a repeated enqueue of one attempt is refused,
  and a requeued job's new attempt is never blocked by the old id.
* orjson, not pickle, serialises the job (arguments are two integers).
* Results are not kept (keep_result=0), so an id is never blocked by a stored result.
* Enqueue is arq's own check-then-set, without WATCH/MULTI round trips, in one Lua step for a
  whole scheduling batch (enqueue.lua, up to BATCH launches a call): a step per launch, even
  pipelined, was the largest part of the scheduler's own work per placement (redis-py packs and
  parses every command).
* The same step publishes a wake-up hint on the channel of each worker it gave a launch; the
  worker polls its queue when the hint arrives, and every `poll_delay` seconds (SCNS_ARQ_POLL_S)
  as a safety net, since a hint may be lost. arq's own loop only polls, which put up to a poll
  delay into every job's submit->start time.
* arq claims a due launch with WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC: four round trips
  per launch, one launch after another, which capped a worker at ~100 launches/s under load.
  `LaunchWorker.start_jobs` claims a whole read in one Lua step (claim.lua) with the same
  checks and the same in-progress key; the rest of arq's job handling is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from arq.worker import Retry, Worker, func
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from shared import clock
from shared.db import UNAVAILABLE
from shared.keys import Keys
from shared.lua import Scripts, source
from shared.redis import CONNECT_TIMEOUT_S, HEALTH_CHECK_S, SOCKET_TIMEOUT_S
from shared.wakeup import Wakeups

log = logging.getLogger(__name__)

LAUNCH = "launch"
JOB_EXPIRY_MS = 7 * 86_400_000  # a launch waits up to a week for its worker to come back
CLOCK_TOLERANCE_MS = 60_000  # see ArqDispatcher._batch
BATCH = 1_000  # launches per enqueue.lua call (a page: SCNS_SCHEDULER_BATCH at most, 500)


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    worker_id: str
    job_id: int
    attempt: int


class Dispatcher(Protocol):
    async def enqueue(self, items: Sequence[Dispatch]) -> list[bool]: ...

    async def withdraw(self, item: Dispatch) -> None: ...

    async def queued(self, worker_id: str) -> list[tuple[int, int]]: ...

    async def missing(self, items: Sequence[Dispatch]) -> list[Dispatch]: ...


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class ArqDispatcher:
    """Enqueue side, used by the scheduler (and the reconciler to re-enqueue)."""

    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts or Scripts(redis)

    async def enqueue(self, items: Sequence[Dispatch]) -> list[bool]:
        """Put launches on their workers' queues: True for each one enqueued now, False for one
        that already was (a repeat of its attempt)."""
        if not items:
            return []
        now = clock.now_ms()
        script = self.scripts.script("enqueue")
        out: list[bool] = []
        # one call a batch, each awaited in turn: a pipeline of scripts would first ask Redis
        # whether it knows them (a round trip of its own), and a page is one batch anyway
        for i in range(0, len(items), BATCH):
            keys, args = self._batch(items[i:i + BATCH], now)
            replies = await script(keys=keys, args=args)
            out += [int(r) == 1 for r in replies]
        return out

    def _batch(self, items: Sequence[Dispatch], now: int) -> tuple[list[str], list[Any]]:
        """enqueue.lua's keys and arguments: each worker's queue and channel named once, the
        launches in one argument (one per launch cost more to send than the script to run)."""
        at: dict[str, int] = {}  # worker -> its position (1-based) among the queues
        launch_keys: list[str] = []
        lines: list[bytes] = []
        for it in items:
            arq_id = self.keys.arq_job_id(it.job_id, it.attempt)
            launch_keys += [job_key_prefix + arq_id, result_key_prefix + arq_id]
            job = serialize_job(LAUNCH, (it.job_id, it.attempt), {}, None, now,
                                serializer=_dumps)
            lines.append(b"%d %s\n" % (at.setdefault(it.worker_id, len(at) + 1), job))
        keys = [self.keys.arq_queue(w) for w in at] + launch_keys
        channels = [self.keys.wakeup(launch_topic(w)) for w in at]
        # the score is when a launch becomes due by the *worker's* clock (arq polls its queue
        # up to its own now): back-dated, so that a worker whose clock is behind the
        # scheduler's by up to CLOCK_TOLERANCE_MS still takes it at once; the order of
        # launches (by score) is kept
        score = now - CLOCK_TOLERANCE_MS
        return keys, [len(at), score, JOB_EXPIRY_MS, job_key_prefix, *channels,
                      b"".join(lines)]

    async def withdraw(self, item: Dispatch) -> None:
        """Remove a launch that must not run (its job was cancelled or handed back)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self.withdraw_in(pipe, item)
            await pipe.execute()

    def withdraw_in(self, pipe: Pipeline, item: Dispatch) -> None:
        """Queue a `withdraw` on a pipeline the caller executes."""
        arq_id = self.keys.arq_job_id(item.job_id, item.attempt)
        pipe.zrem(self.keys.arq_queue(item.worker_id), arq_id)
        pipe.delete(job_key_prefix + arq_id)

    async def missing(self, items: Sequence[Dispatch]) -> list[Dispatch]:
        """The launches that are neither waiting on their queue nor being run by arq (they
        vanished: a Redis restart, a crash between a placement and its enqueue)."""
        if not items:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for it in items:
                arq_id = self.keys.arq_job_id(it.job_id, it.attempt)
                pipe.exists(job_key_prefix + arq_id, in_progress_key_prefix + arq_id)
            present = await pipe.execute()
        return [it for it, n in zip(items, present, strict=True) if not n]

    async def queued(self, worker_id: str) -> list[tuple[int, int]]:
        """(job, attempt) of every launch waiting on a worker's queue."""
        ids: list[str] = await self.redis.zrange(self.keys.arq_queue(worker_id), 0, -1)
        out = []
        for arq_id in ids:
            job, _, attempt = arq_id.removeprefix(self.keys.prefix).partition(":")
            if job.isdigit() and attempt.isdigit():
                out.append((int(job), int(attempt)))
        return out


Launch = Callable[[int, int], Awaitable[None]]


def launch_topic(worker_id: str) -> str:
    """The wake-up channel (Keys.wakeup) of a worker's launch queue."""
    return f"launch:{worker_id}"


class LaunchWorker(Worker):
    """arq's Worker, woken by hints as well as its poll, claiming a read in one step."""

    def __init__(self, *args: Any, wakeups: Wakeups, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wakeups = wakeups
        self._stop = asyncio.Event()
        self._backlog = False  # the last read left due launches unclaimed for lack of room
        self._claim = self.pool.register_script(source("claim"))

    async def main(self) -> None:
        """arq's main loop (its pool is ours: see ArqIntake.run), polling on each hint."""
        self.ctx["redis"] = self.pool
        listener = asyncio.create_task(self.wakeups.listen(self._stop), name="launch-wakeups")
        try:
            while True:
                self.wakeups.take()
                await self._poll_iteration()
                # a hint (a new launch, or room for one that waits) ends the wait early
                await self.wakeups.wait(self._stop, self.poll_delay_s)
        finally:
            self._stop.set()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs (the same checks, the same in-progress key), one step per read."""
        room = self.max_jobs - self.job_counter
        self._backlog = len(job_ids) > room
        ids = [b.decode() for b in job_ids[:max(room, 0)]]
        if not ids:
            return
        claimed = await self._claim(
            keys=[self.queue_name, *(in_progress_key_prefix + i for i in ids)],
            args=[int(self.in_progress_timeout_s * 1000), timestamp_ms(), *ids])
        for k in range(0, len(claimed), 2):
            job_id = claimed[k].decode() if isinstance(claimed[k], bytes) else str(claimed[k])
            await self.sem.acquire()  # never waits: only `room` were claimed
            self.job_counter += 1
            t = self.loop.create_task(self.run_job(job_id, int(float(claimed[k + 1]))))
            t.add_done_callback(self._launch_done)
            self.tasks[job_id] = t

    async def close(self) -> None:
        """arq's close, without its call to redis-py's deprecated close()."""
        self.handle_sig(signal.SIGUSR1)  # cancels the main loop and what still runs
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.pool.delete(self.health_check_key)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None

    def _launch_done(self, _: asyncio.Task[None]) -> None:
        self._release_sem_dec_counter_on_complete()
        if self._backlog:
            self.wakeups.set()


class ArqIntake:
    """Worker side: an arq Worker on this executor's queue that calls `launch(job, attempt)`."""

    def __init__(
        self, redis_url: str, keys: Keys, worker_id: str, launch: Launch, *,
        max_jobs: int = 64, poll_delay_s: float = 0.05, launch_timeout_s: float = 60.0,
    ) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self.worker_id = worker_id
        self.launch = launch
        self.max_jobs = max_jobs
        self.poll_delay_s = poll_delay_s
        self.launch_timeout_s = launch_timeout_s
        self._worker: Worker | None = None
        self._pool: ArqRedis | None = None

    async def _task(self, ctx: dict[str, Any], job_id: int, attempt: int) -> None:
        try:
            # shielded: a launch half done (RUNNING recorded, process not started) must finish
            await asyncio.shield(self.launch(job_id, attempt))
        except UNAVAILABLE as e:
            # PostgreSQL is away: arq retries the launch later (same job id: idempotent)
            log.warning("launch of job %s deferred, PostgreSQL unavailable: %s", job_id, e)
            raise Retry(defer=2) from e

    async def run(self) -> None:
        """Consume launches until `stop()`; must be called inside the running loop (arq's Worker
        picks up the current loop in its constructor)."""
        # every launch in flight holds a connection for arq's MULTI (more than the pool holds
        # would fail with "Too many connections"): a launch waits for one instead (at most
        # `timeout`); connecting and every reply are bounded as in shared/redis.py (arq makes
        # no blocking reads here; the wake-up listener's idle subscription is PINGed)
        pool = BlockingConnectionPool.from_url(
            self.redis_url, max_connections=self.max_jobs + 8, timeout=30,
            socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_S)
        self._pool = ArqRedis(pool, job_serializer=_dumps, job_deserializer=orjson.loads,
                              default_queue_name=self.keys.arq_queue(self.worker_id))
        wakeups = Wakeups(self._pool, self.keys.wakeup(launch_topic(self.worker_id)))
        self._worker = LaunchWorker(
            wakeups=wakeups,
            functions=[func(self._task, name=LAUNCH, timeout=self.launch_timeout_s,
                            max_tries=1000)],
            queue_name=self.keys.arq_queue(self.worker_id),
            redis_pool=self._pool,
            handle_signals=False,
            max_jobs=self.max_jobs,
            poll_delay=self.poll_delay_s,
            queue_read_limit=self.max_jobs * 4,
            keep_result=0,
            job_serializer=_dumps,
            job_deserializer=orjson.loads,
            log_results=False,
            health_check_interval=60,
        )
        try:
            await self._worker.async_run()
        except (RedisError, OSError):
            self._worker = None
            await self._pool.aclose(close_connection_pool=True)
            raise

    async def stop(self) -> None:
        """Stop taking launches and wait for those in progress (they are short)."""
        if self._worker is None:
            return
        self._worker.allow_pick_jobs = False
        # arq's close() cancels what is still running: let the (short) launches finish first
        in_flight = [t for t in self._worker.tasks.values() if not t.done()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.launch_timeout_s)
        await self._worker.close()
        self._worker = None
