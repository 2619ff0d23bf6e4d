"""The executor's supervisor: starts launched jobs and watches them to the end.

A launch (from arq) wins the guarded ALLOCATED -> RUNNING transition for its attempt on this
worker, or is dropped: a duplicated delivery, a stale attempt or a cancelled job never runs.
The job then runs under the wrapper (see process.py) for as long as it takes; this supervisor
enforces its time limit (SIGTERM to its process group, SIGKILL after SCNS_KILL_GRACE_S ->
TIMEOUT), cancels it on request (same signalling -> CANCELLED), ships its output, and finally
records the terminal state (guarded by attempt and worker, shielded from cancellation, retried
until PostgreSQL takes it), releases the allocation and emits `job-finished`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.executor.environment import decode_status, job_environment
from services.executor.process import (
    SIGKILL,
    SIGTERM,
    Spawned,
    adopt,
    alive,
    read_pids,
    read_status,
    signal_group,
    spawn,
)
from shared.allocation import Allocator
from shared.bus import StreamBus
from shared.db import UNAVAILABLE
from shared.db.jobs import Job, JobStore, QueueStore, finish, hand_back
from shared.events import JobFinished, JobStarted
from shared.keys import Keys
from shared.output import OutputShipper, Tail
from shared.states import JobState, state_for_exit

log = logging.getLogger(__name__)

STARTED = Counter("scns_executor_jobs_started_total", "Jobs started")
FINISHED = Counter("scns_executor_jobs_finished_total", "Jobs finished", ["state"])
DROPPED = Counter("scns_executor_launches_dropped_total",
                  "Launches dropped because the guarded start did not match")
RUNNING = Gauge("scns_executor_running_jobs", "Jobs running on this worker")

_PG_ERRORS = UNAVAILABLE


@dataclass(slots=True)
class RunningJob:
    job: Job
    jobdir: Path
    proc: Spawned
    tail: Tail
    started: float = field(default_factory=time.monotonic)
    stop_state: JobState | None = None
    stop_reason: str | None = None
    adopted: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Runner:
    def __init__(
        self, *, worker_id: str, data_dir: Path, pool: asyncpg.Pool[Any], redis: Redis,
        keys: Keys, allocator: Allocator, bus: StreamBus, shipper: OutputShipper,
        base_env: Mapping[str, str], kill_grace_s: float,
        lease_valid: Callable[[], bool] = lambda: True,
    ) -> None:
        self.worker_id = worker_id
        self.jobs_dir = data_dir / "jobs"
        self.pool = pool
        self.redis = redis
        self.keys = keys
        self.allocator = allocator
        self.bus = bus
        self.shipper = shipper
        self.base_env = dict(base_env)
        self.kill_grace_s = kill_grace_s
        self.lease_valid = lease_valid
        self.queue = QueueStore(pool)
        self.running: dict[int, RunningJob] = {}
        self._cancel_before_start: set[tuple[int, int]] = set()
        self._ship_task: asyncio.Task[None] | None = None

    # --- launch --------------------------------------------------------------------------
    async def launch(self, job_id: int, attempt: int) -> bool:
        """Start one attempt if it is still ours to start; False when the launch is dropped."""
        if not self.lease_valid():
            # Fencing: the cluster may already count this worker as gone. Do not start work it
            # no longer expects here; give the job back to be placed again.
            await hand_back(self.pool, job_id=job_id, attempt=attempt, worker_id=self.worker_id)
            DROPPED.inc()
            log.warning("launch refused: this worker's lease is not valid",
                        extra={"event": "launch-fenced", "job_id": job_id})
            return False
        job = await self.queue.start(job_id, attempt, self.worker_id)
        if job is None:
            DROPPED.inc()
            log.info("launch dropped: the attempt is not ALLOCATED to this worker",
                     extra={"event": "launch-dropped", "job_id": job_id, "attempt": attempt})
            return False
        jobdir = self.jobs_dir / f"{job_id}.{attempt}"
        try:
            proc = await self._start(job, jobdir)
        except OSError as e:
            log.error("could not start the job: %s", e, extra={"job_id": job_id})
            await self._record(job, JobState.FAILED, exit_code=None, signal=None,
                               reason=f"launch failed: {e}"[:200])
            return True
        rj = RunningJob(job=job, jobdir=jobdir, proc=proc,
                        tail=Tail(job_id=job_id, attempt=attempt, jobdir=jobdir))
        self.running[job_id] = rj
        RUNNING.set(len(self.running))
        STARTED.inc()
        rj.task = asyncio.create_task(self._supervise(rj), name=f"job-{job_id}.{attempt}")
        if job.cancel_requested or (job_id, attempt) in self._cancel_before_start:
            self._cancel_before_start.discard((job_id, attempt))
            self.stop(rj, JobState.CANCELLED, "cancelled")
        return True

    async def _start(self, job: Job, jobdir: Path) -> Spawned:
        # one mkdir per job: on a busy node directory creation is a visible part of the cost
        try:
            os.mkdir(jobdir)
        except FileExistsError:
            pass
        except FileNotFoundError:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            os.mkdir(jobdir)
        (jobdir / "script").write_text(job.script)
        env = job_environment(
            base=self.base_env, user_env=job.env, job_id=job.id, attempt=job.attempt,
            cpus=job.cpus, memory_mb=job.memory_mb, name=job.name, submit_dir=job.submit_dir,
            worker_id=self.worker_id)
        return await spawn(jobdir, env)

    # --- supervision ---------------------------------------------------------------------
    async def _supervise(self, rj: RunningJob) -> None:
        job = rj.job
        loop = asyncio.get_running_loop()
        try:
            pid = await rj.proc.child_pid
            if not rj.adopted:
                await self.bus.publish(JobStarted(job_id=job.id, attempt=job.attempt,
                                                  worker_id=self.worker_id, pid=pid))
        except ProcessLookupError:
            pass  # the wrapper died before starting the job; its status says so below
        except RedisError as e:
            log.warning("could not publish job-started: %s", e, extra={"job_id": job.id})
        if job.time_limit_s:
            remaining = job.time_limit_s - (time.monotonic() - rj.started)
            rj.timers.append(loop.call_later(max(remaining, 0), self.stop, rj,
                                             JobState.TIMEOUT, "time limit"))
        status = await rj.proc.status
        for t in rj.timers:
            t.cancel()
        if status < 0:
            recorded = read_status(rj.jobdir)
            status = recorded if recorded is not None else -1
        await asyncio.shield(self._finish(rj, status))

    def stop(self, rj: RunningJob, state: JobState, reason: str) -> None:
        """SIGTERM the job's process group now, SIGKILL it after the grace period."""
        if rj.stop_state is not None:
            return
        rj.stop_state, rj.stop_reason = state, reason
        log.info("stopping job (%s)", reason, extra={"event": "job-stopping", "job_id": rj.job.id,
                                                     "state": str(state)})
        pid = rj.proc.child_pid
        if pid.done():
            self._signal(rj)
        else:  # the wrapper has not reported the pid yet: signal as soon as it does
            pid.add_done_callback(lambda _: self._signal(rj))

    def _signal(self, rj: RunningJob) -> None:
        pid = rj.proc.child_pid
        if pid.cancelled() or pid.exception() is not None:
            return
        pgid = pid.result()
        signal_group(pgid, SIGTERM)
        loop = asyncio.get_running_loop()
        rj.timers.append(loop.call_later(self.kill_grace_s, signal_group, pgid, SIGKILL))

    async def cancel(self, job_id: int, attempt: int) -> bool:
        rj = self.running.get(job_id)
        if rj is None or rj.job.attempt != attempt:
            # the launch may still be on its way: remember, launch() checks
            self._cancel_before_start.add((job_id, attempt))
            return False
        self.stop(rj, JobState.CANCELLED, "cancelled")
        return True

    async def _finish(self, rj: RunningJob, status: int) -> None:
        job = rj.job
        pid = rj.proc.child_pid
        if pid.done() and not pid.cancelled() and pid.exception() is None and (
                not rj.adopted or alive(pid.result(), not_before=_started_wall(job))):
            # whatever the script left running in its process group ends with it
            signal_group(pid.result(), SIGKILL)
        await self.shipper.ship(rj.tail, final=True)
        exit_code, sig = decode_status(status) if status >= 0 else (None, None)
        if rj.stop_state is not None:
            state, reason = rj.stop_state, rj.stop_reason
        elif status < 0:
            state, reason = JobState.FAILED, "the job wrapper died"
        else:
            state, reason = state_for_exit(exit_code, sig), None
        await self._record(job, state, exit_code=exit_code, signal=sig, reason=reason)
        self.running.pop(job.id, None)
        RUNNING.set(len(self.running))
        log.info("job finished", extra={"event": "job-finished", "job_id": job.id,
                                        "attempt": job.attempt, "state": str(state),
                                        "exit_code": exit_code, "signal": sig})

    async def _record(self, job: Job, state: JobState, *, exit_code: int | None,
                      signal: int | None, reason: str | None) -> None:
        """PostgreSQL (retried until it answers), then the Redis release, then the event."""
        delay = 0.2
        while True:
            try:
                done = await finish(self.pool, job_id=job.id, attempt=job.attempt,
                                    worker_id=self.worker_id, state=state, exit_code=exit_code,
                                    signal=signal, reason=reason)
                break
            except _PG_ERRORS as e:
                log.warning("cannot record the end of job %s yet: %s", job.id, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if done is None:
            log.warning("the attempt is no longer ours; its end is not recorded",
                        extra={"job_id": job.id, "attempt": job.attempt})
        FINISHED.labels(str(state)).inc()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                await self.allocator.release_in(pipe, job_id=job.id, attempt=job.attempt,
                                                worker_id=self.worker_id)
                if done is not None:
                    self.bus.publish_in(pipe, JobFinished(
                        job_id=job.id, attempt=job.attempt, worker_id=self.worker_id,
                        state=str(state), exit_code=exit_code, signal=signal))
                    pipe.publish(self.keys.wakeup("scheduler"), str(job.id))
                await pipe.execute()
        except RedisError as e:
            # the reconciler releases allocations PostgreSQL says are released
            log.warning("could not release or announce job %s: %s", job.id, e)

    # --- after a restart --------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Take over the jobs a previous executor of this worker left RUNNING.

        (a) the job's process is still alive (same pid, created after the job started):
        re-adopt it and finish it normally; (b) it ended while no executor watched: its
        wrapper recorded the status, finish it with that; (c) it vanished without a status:
        NODE_FAIL, then a new attempt if the job asked for requeue. Nothing is retried unless
        the job asked for it.
        """
        counts = {"adopted": 0, "collected": 0, "lost": 0}
        for job in await self.queue.on_worker(self.worker_id, [JobState.RUNNING]):
            if job.id in self.running:
                continue
            jobdir = self.jobs_dir / f"{job.id}.{job.attempt}"
            started = _started_wall(job)
            status = read_status(jobdir)
            pids = read_pids(jobdir)
            tail = Tail(job_id=job.id, attempt=job.attempt, jobdir=jobdir)
            if status is None and pids and (alive(pids[0], not_before=started)
                                            or alive(pids[1], not_before=started)):
                counts["adopted"] += 1
            elif status is not None and pids:
                counts["collected"] += 1
            else:
                counts["lost"] += 1
                await self._record(job, JobState.NODE_FAIL, exit_code=None, signal=None,
                                   reason="its process vanished while the executor was down")
                if job.requeue:
                    await JobStore(self.pool).requeue(job.id, attempt=job.attempt)
                continue
            # the previous executor shipped part of the output: ship it all again, from the file
            await self.shipper.reset(tail)
            rj = RunningJob(job=job, jobdir=jobdir, proc=adopt(jobdir, pids[0], pids[1], started),
                            tail=tail, started=time.monotonic() - (time.time() - started),
                            adopted=True)
            self.running[job.id] = rj
            RUNNING.set(len(self.running))
            rj.task = asyncio.create_task(self._supervise(rj), name=f"job-{job.id}.{job.attempt}")
            if job.cancel_requested:
                self.stop(rj, JobState.CANCELLED, "cancelled")
        if any(counts.values()):
            log.warning("recovered jobs of a previous executor: %s", counts,
                        extra={"event": "recovered", **counts})
        return counts

    # --- output and shutdown -------------------------------------------------------------
    async def ship_output(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            for rj in list(self.running.values()):
                await self.shipper.ship(rj.tail)

    async def wait_all(self, within_s: float) -> bool:
        tasks = [rj.task for rj in self.running.values() if rj.task is not None]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=within_s)
        return not pending

    async def stop_all(self, state: JobState, reason: str) -> None:
        for rj in list(self.running.values()):
            self.stop(rj, state, reason)
        await self.wait_all(self.kill_grace_s + 5)


def _started_wall(job: Job) -> float:
    return job.started_at.timestamp() if job.started_at else time.time()
