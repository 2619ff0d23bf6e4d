"""No job stuck in RUNNING: the executor makes PostgreSQL's RUNNING jobs on its worker true.

At start-up (jobs a previous executor of this worker left) and then every SCNS_AUDIT_S, every
job PostgreSQL says is RUNNING here but that no supervisor of this process watches is taken
over:

* a start this process committed without hearing the answer (it never spawned it): started now
  (a start committed by an executor process that then died is not known to be unspawned, and
  goes the way below: NODE_FAIL, then a new attempt if the job asked for requeue);
* its process is alive (the pid its wrapper recorded, checked to be this job's own): adopted
  and supervised to its end;
* it ended while nobody watched (its wrapper recorded a valid status): collected;
* otherwise it is gone: NODE_FAIL (then a new attempt if it asked for requeue), or FAILED when
  the job itself made its status file unreadable; whatever it left in its cgroup is killed.

After each audit, the cgroup of any job this executor does not run (ended, or declared lost by
the reconciler, while no executor watched) is killed and removed (Runner.sweep_leftovers): a job
whose executor died leaves nothing running once a new one has started. An adopted or collected
job's leftovers are killed when its supervision ends, as for any job.

Each job is handled on its own: one that cannot be taken over is logged and retried at the next
audit, and never stops the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from services.executor.launcher import is_launcher
from services.executor.process import adopt, belongs_to
from services.executor.runner import REQUEUE_REASON, Runner, RunningJob
from shared import clock
from shared.db import UNAVAILABLE
from shared.db.jobs import Job
from shared.jobfiles import read_pids, read_status
from shared.states import JobState

log = logging.getLogger(__name__)


class Auditor:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def audit(self) -> dict[str, int]:
        r = self.runner
        counts: collections.Counter[str] = collections.Counter()
        for job in await r.jobs.on_worker(r.worker_id, [JobState.RUNNING]):
            if not self._unwatched(job):
                continue
            try:
                counts[await self.take_over(job)] += 1
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE:
                raise  # the whole audit waits for PostgreSQL
            except Exception:
                log.exception("could not take over job %s (next audit tries again)", job.id,
                              extra={"event": "take-over-failed", "job_id": job.id})
        if counts:
            log.warning("took over jobs nobody watched: %s", dict(counts),
                        extra={"event": "recovered", **counts})
        try:
            if swept := await r.sweep_leftovers():
                counts["swept"] += swept
        except OSError:
            log.exception("could not sweep leftover job cgroups (next audit tries again)")
        return dict(counts)

    def _unwatched(self, job: Job) -> bool:
        r = self.runner
        key = (job.id, job.attempt)
        if key in r._launching or key in r._ended:
            return False  # being started, or just ended (the row we read was older)
        rj = r.running.get(job.id)
        if rj is None:
            return True
        if rj.job.attempt != job.attempt:
            return False
        if rj.task is not None and not rj.task.done():
            return False
        r.running.pop(job.id, None)  # its supervisor died: take it over again
        return True

    async def take_over(self, job: Job) -> str:
        r = self.runner
        key = (job.id, job.attempt)
        if key in r._unconfirmed:
            sent = r._unconfirmed.pop(key)
            r._launching.add(key)  # a retried launch of it now finds it being started
            try:
                await r.run_fenced(job, sent)
            finally:
                r._launching.discard(key)
            return "started"
        jobdir = r.jobdir(job)
        started = job.started_at.timestamp() if job.started_at else clock.time()

        def mine(pid: int | None) -> bool:
            return belongs_to(pid, job_id=job.id, attempt=job.attempt, not_before=started)

        def watched(pid: int | None) -> bool:
            """The pid file's second pid: the job's wrapper, or the launcher that started it
            (either records its status when it ends)."""
            return mine(pid) or is_launcher(pid)

        status = read_status(jobdir)
        pids = read_pids(jobdir)
        child, wrapper = pids if pids else (None, None)
        if status.value is not None:
            outcome = "collected"
        elif mine(child) or watched(wrapper):
            outcome = "adopted"
        else:
            await r.isolation.containment.discard(jobdir.name)  # anything it left behind
            if status.tampered:
                await r._record(job, JobState.FAILED,
                                reason="its status file is unreadable (the job changed it)")
            else:
                await r._record(job, JobState.NODE_FAIL,
                                reason="its process vanished while no executor watched it")
            return "lost"
        launch = r.plan(job, jobdir)  # what the start did: the same job gives the same plan
        tail = r.tail(job, jobdir, launch)
        if status.value is not None and pids is None:
            tail.use_job_directory()  # it never started: why is in the job directory
        # a previous executor shipped part of the output: ship it all again, from the file
        await r.shipper.reset(tail)
        rj = RunningJob(job=job, jobdir=jobdir, tail=tail, launch=launch, adopted=True,
                        proc=adopt(jobdir, child if mine(child) else None, wrapper,
                                   alive_check=mine, wrapper_check=watched),
                        started=time.monotonic() - (clock.time() - started))
        r._track(rj)
        if job.cancel_requested:
            r.stop(rj, JobState.CANCELLED, "cancelled")
        elif job.requeue_requested:
            r.stop(rj, JobState.CANCELLED, REQUEUE_REASON)
        return outcome

    async def run(self, stop: asyncio.Event, every_s: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            if stop.is_set():
                return
            try:
                await self.audit()
            except UNAVAILABLE as e:
                log.warning("audit skipped, PostgreSQL unavailable: %s", e)
