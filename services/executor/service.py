"""The executor: one per worker node.

It registers the worker (heartbeat client), takes launches from its arq queue, runs them under
the supervisor (runner.py), listens on its control stream for cancel requests, and on SIGTERM
drains: it stops taking placements and launches, hands back jobs it has not started, gives
running jobs SCNS_DRAIN_GRACE_S to finish, stops the rest (NODE_FAIL, requeued if the job asked
for it), and deregisters.

At start-up, before anything runs, it decides how jobs are kept apart (containment.py: which
user they run as, where their directories live, cgroup or subreaper) and fails with a message
naming the setting when that cannot be done safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

from prometheus_client import Counter
from redis.exceptions import RedisError

from services.executor import containment
from services.executor.environment import base_environment
from services.executor.output import JobOutputShipper
from services.executor.recovery import Auditor
from services.executor.runner import Runner
from shared import capacity, failpoints
from shared.bus import Consumer, Delivery
from shared.db import UNAVAILABLE
from shared.dispatch import ArqIntake
from shared.events import CancelRequested, Event
from shared.fencing import CHECK_S, Fence
from shared.heartbeat import HeartbeatClient
from shared.settings import Settings
from shared.states import JobState
from shared.wiring import Wiring

log = logging.getLogger(__name__)

FENCED = Counter("scns_executor_fenced_jobs_total",
                 "Running jobs stopped because the lease was not renewed in time")

_PG_ERRORS = UNAVAILABLE


class Executor:
    def __init__(self, wiring: Wiring, executor_env: Mapping[str, str]) -> None:
        settings = self.settings = wiring.settings
        self.keys = wiring.keys
        self.worker_id = settings.worker_id
        self.jobs = wiring.jobs
        self.lifecycle = wiring.lifecycle
        self.bus = wiring.bus
        cap = capacity.detect(settings.worker_cpus, settings.worker_memory_mb)
        self.heartbeat = HeartbeatClient(
            wiring.membership, worker_id=self.worker_id, capacity=cap,
            labels=capacity.default_labels(settings.worker_labels),
            heartbeat_s=settings.heartbeat_s, ttl_s=settings.worker_ttl_s)
        self.runner = Runner(
            worker_id=self.worker_id, data_dir=settings.data_dir, lifecycle=wiring.lifecycle,
            jobs=wiring.jobs,
            shipper=JobOutputShipper(wiring.redis, self.keys,
                                     cap_bytes=settings.output_cap_bytes,
                                     ttl_s=settings.output_ttl_s),
            base_env=base_environment(executor_env), kill_grace_s=settings.kill_grace_s,
            lease_valid=self.heartbeat.lease_valid,
            lease_held_since=self.heartbeat.lease_held_since)
        self.fence = Fence.of(settings)
        self.auditor = Auditor(self.runner)
        self.intake = ArqIntake(settings.redis_url, self.keys, self.worker_id, self._launch,
                                max_jobs=settings.arq_max_jobs, poll_delay_s=settings.arq_poll_s)
        self.control = Consumer(
            self.bus, group="executor", consumer=self.worker_id,
            streams=[self.keys.control(self.worker_id)], handler=self._on_control,
            claim_idle_ms=settings.claim_idle_ms, max_deliveries=settings.max_deliveries,
            block_ms=1000)
        self._accepting = True

    async def _launch(self, job_id: int, attempt: int) -> None:
        if not self._accepting:
            return  # draining: hand_back_unstarted() returns it to the queue
        await self.runner.launch(job_id, attempt)

    async def _on_control(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, CancelRequested):
            await self.runner.cancel(event.job_id, event.attempt, requeue=event.requeue)

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        isolation = containment.prepare(
            job_containment=s.job_containment, job_user=s.job_user,
            run_as_submitter=s.run_as_submitter, jobs_dir=s.jobs_dir, data_dir=s.data_dir,
            worker_id=s.worker_id, pids_max=s.job_pids_max, euid=os.geteuid())
        self.runner.configure(isolation)
        log.info("%s", isolation.describe(), extra={"event": "isolation",
                                                    "mode": str(isolation.containment.mode)})
        await self.heartbeat.register()
        # what a previous executor of this worker left running (and the cgroups of what it
        # left that no longer runs)
        await self.auditor.audit()

    def close(self) -> None:
        """Remove this executor's (empty) cgroup directories."""
        self.runner.isolation.containment.close()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = {
            "heartbeat": asyncio.create_task(self.heartbeat.run(stop), name="heartbeat"),
            "intake": asyncio.create_task(self._intake(stop), name="intake"),
            "fence": asyncio.create_task(self._fence(stop), name="fence"),
            "control": asyncio.create_task(self._consume_control(stop), name="control"),
            "output": asyncio.create_task(self.runner.tend(stop), name="output"),
            "audit": asyncio.create_task(self.auditor.run(stop, self.settings.audit_s),
                                         name="audit"),
        }
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks.values(), stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    log.error("task %s died", t.get_name(), exc_info=t.exception())
        finally:
            stopper.cancel()
            await self.drain()
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            await self.runner.close()
            await self.heartbeat.deregister()
            self.close()

    async def _intake(self, stop: asyncio.Event) -> None:
        """arq's worker loop ends on a Redis error; start it again until we are stopped."""
        while not stop.is_set():
            try:
                await self.intake.run()
            except (RedisError, OSError) as e:
                log.warning("launch intake lost Redis, restarting: %s", e)
                await asyncio.sleep(1)

    async def _fence(self, stop: asyncio.Event) -> None:
        """Without a lease renewal for `fence.term_after_s`, stop every running job: SIGTERM
        now, SIGKILL a kill grace later, done a margin before the cluster may declare them lost
        and run them again (shared/fencing.py). Jobs end NODE_FAIL, recorded once PostgreSQL
        answers (the reconciler may have recorded it first: the attempt guard keeps one)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=CHECK_S)
            lapsed = self.heartbeat.seconds_since_renewal()
            if lapsed < self.fence.term_after_s:
                continue
            fenced = [rj for rj in self.runner.running.values() if rj.stop_state is None]
            if failpoints.armed("executor:no-fence"):
                continue  # tests only: shows that the partition tests notice a missing fence
            if fenced:
                log.error("lease not renewed for %.1f s: stopping %d running jobs before the "
                          "cluster may declare them lost (at %.0f s)", lapsed, len(fenced),
                          self.fence.lost_after_s,
                          extra={"event": "fenced", "jobs": [rj.job.id for rj in fenced]})
                FENCED.inc(len(fenced))
            for rj in fenced:
                self.runner.stop(rj, JobState.NODE_FAIL, "lease lost")

    async def _consume_control(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.control.run(stop)
            except RedisError as e:
                log.warning("control consumer reconnecting: %s", e)
                await asyncio.sleep(1)

    async def drain(self) -> None:
        """Two-phase shutdown: stop intake, hand back, wait, stop what is left. A job stopped
        here ends NODE_FAIL, and the lifecycle starts a new attempt only if it asked for
        requeue and was genuinely running to the end (not cancelled meanwhile)."""
        log.info("draining", extra={"event": "drain", "running": len(self.runner.running)})
        self._accepting = False
        try:
            await self.heartbeat.begin_leaving()
        except RedisError as e:
            log.warning("could not mark the lease as leaving: %s", e)
        await self.intake.stop()
        await self.hand_back_unstarted()
        if not await self.runner.wait_all(self.settings.drain_grace_s):
            log.warning("stopping %d jobs still running after the grace period",
                        len(self.runner.running), extra={"event": "drain-stop"})
            await self.runner.stop_all(JobState.NODE_FAIL, "executor shut down")

    async def hand_back_unstarted(self) -> int:
        """ALLOCATED jobs on this worker go back to PENDING with their attempt unchanged."""
        try:
            jobs = await self.jobs.on_worker(self.worker_id, [JobState.ALLOCATED])
            n = await self.lifecycle.hand_back([self.lifecycle.slot(j) for j in jobs])
        except _PG_ERRORS as e:
            log.warning("could not hand back unstarted jobs (the reconciler will): %s", e)
            return 0
        if n:
            log.info("handed back %d unstarted jobs", n, extra={"event": "hand-back"})
        return n


async def _main() -> int:
    from shared import service

    holder: list[Executor] = []

    async def ready(ctx: service.Context) -> dict[str, bool]:
        return {"lease": bool(holder) and holder[0].heartbeat.lease_valid()}

    settings = Settings.from_env()
    async with service.started("executor", pool_size=8, ready=ready,
                               label=f"executor:{settings.worker_id}") as ctx:
        executor = Executor(ctx.wiring, dict(os.environ))
        holder.append(executor)
        await executor.start()
        log.info("executor started", extra={"event": "started", "worker_id": settings.worker_id,
                                            "cpus": executor.heartbeat.capacity.cpus})
        await executor.run(ctx.stop)
    return 0

def main() -> int:
    from shared import runtime

    return runtime.run(_main)
