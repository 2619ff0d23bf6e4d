"""The executor's supervisor: starts launched jobs and watches them to the end.

A launch (from arq) wins the guarded ALLOCATED -> RUNNING transition for its attempt on this
worker (shared/lifecycle), or is dropped: a duplicated delivery, a stale attempt or a cancelled
job never runs. The job then runs under the wrapper (see process.py) for as long as it takes;
this supervisor enforces its time limit (SIGTERM to its process group, SIGKILL after
SCNS_KILL_GRACE_S -> TIMEOUT), stops it on request (cancel -> CANCELLED; requeue -> a new
attempt), ships its output, samples what it consumes, and finally records the end through the
lifecycle (shielded from cancellation, retried until PostgreSQL takes it), which also decides
whether a retry or a requeue follows.

The job directory is the job's to write: what is read back from it (pid, status, output) is
parsed defensively (shared/jobfiles.py), and a failure about one job never stops the tasks that
serve the others. How a job's script, working directory and output files are set up (and where
its output is shipped from) is in scripts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.executor.environment import decode_status, job_environment
from services.executor.output import JobOutputShipper, JobTail
from services.executor.process import SIGKILL, SIGTERM, Launch, Spawned, signal_group, spawn
from services.executor.scripts import normalise, plan, setup_failure, sources
from services.executor.usage import Sample, combine, sample_groups
from shared import failpoints
from shared.db import UNAVAILABLE
from shared.db.jobs import Job, JobStore, Usage
from shared.dispatch import Dispatch
from shared.jobfiles import read_status
from shared.lifecycle import Ended, Lifecycle
from shared.states import JobState, state_for_exit

log = logging.getLogger(__name__)

STARTED = Counter("scns_executor_jobs_started_total", "Jobs started")
FINISHED = Counter("scns_executor_jobs_finished_total", "Jobs finished", ["state"])
DROPPED = Counter("scns_executor_launches_dropped_total",
                  "Launches dropped because the guarded start did not match")
RUNNING = Gauge("scns_executor_running_jobs", "Jobs running on this worker")

REQUEUE_REASON = "requeue requested"
SAMPLE_AFTER_S = 1.0  # jobs younger than this are not sampled (wait4 covers them)
ENDED_MEMORY = 10_000  # attempts this process ended, remembered so an audit never redoes one


@dataclass(slots=True)
class RunningJob:
    job: Job
    jobdir: Path
    proc: Spawned
    tail: JobTail
    launch: Launch
    started: float = field(default_factory=time.monotonic)
    stop_state: JobState | None = None
    stop_reason: str | None = None
    adopted: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    peak: Sample = field(default_factory=Sample)
    lost_reason: str | None = None  # why its status is unknown, when it is


class Runner:
    def __init__(
        self, *, worker_id: str, data_dir: Path, lifecycle: Lifecycle, jobs: JobStore,
        shipper: JobOutputShipper, base_env: Mapping[str, str], kill_grace_s: float,
        lease_valid: Callable[[], bool] = lambda: True,
    ) -> None:
        self.worker_id = worker_id
        self.jobs_dir = data_dir.absolute() / "jobs"  # the wrapper changes directory
        self.lifecycle = lifecycle
        self.jobs = jobs
        self.shipper = shipper
        self.base_env = dict(base_env)
        self.kill_grace_s = kill_grace_s
        self.lease_valid = lease_valid
        self.running: dict[int, RunningJob] = {}
        self._cancel_before_start: dict[tuple[int, int], bool] = {}  # -> requeue?
        self._launching: set[tuple[int, int]] = set()
        # starts this process committed (or may have) without hearing the answer: it never
        # spawned them, so it may still do so (see launch())
        self._unconfirmed: set[tuple[int, int]] = set()
        self._ended: OrderedDict[tuple[int, int], None] = OrderedDict()

    def jobdir(self, job: Job) -> Path:
        return self.jobs_dir / f"{job.id}.{job.attempt}"

    def plan(self, job: Job, jobdir: Path) -> Launch:
        return plan(job, jobdir=jobdir, worker_id=self.worker_id)

    def tail(self, job: Job, jobdir: Path, launch: Launch) -> JobTail:
        """Where the job's output is shipped from (scripts.py)."""
        tail = JobTail(job_id=job.id, attempt=job.attempt, jobdir=jobdir,
                       sources=sources(launch))
        if launch.stderr and "stderr" not in tail.sources:  # it shares stdout's file
            del tail.cursors["stderr"]
        return tail

    # --- launch --------------------------------------------------------------------------
    async def launch(self, job_id: int, attempt: int) -> bool:
        """Start one attempt if it is still ours to start; False when the launch is dropped."""
        key = (job_id, attempt)
        current = self.running.get(job_id)
        if key in self._launching or (current is not None and current.job.attempt == attempt):
            DROPPED.inc()  # a duplicate delivery of a launch in progress or done
            log.info("launch dropped: this attempt is already started here",
                     extra={"event": "launch-dropped", "job_id": job_id, "attempt": attempt})
            return False
        self._launching.add(key)
        try:
            return await self._launch(job_id, attempt)
        finally:
            self._launching.discard(key)

    async def _launch(self, job_id: int, attempt: int) -> bool:
        key = (job_id, attempt)
        if not self.lease_valid():
            # Fencing: the cluster may already count this worker as gone. Do not start work it
            # no longer expects here; give the job back to be placed again.
            await self.lifecycle.hand_back([Dispatch(worker_id=self.worker_id, job_id=job_id,
                                                     attempt=attempt)])
            DROPPED.inc()
            log.warning("launch refused: this worker's lease is not valid",
                        extra={"event": "launch-fenced", "job_id": job_id})
            return False
        try:
            job = await self.lifecycle.start(job_id, attempt, self.worker_id)
            failpoints.raise_once("executor:start-answer-lost",
                                  ConnectionResetError("the answer to the start was lost"))
        except UNAVAILABLE:
            # the start may have committed: if so, the row says RUNNING here and nothing runs;
            # the retried launch (or the audit) finds it through _unconfirmed
            self._unconfirmed.add(key)
            raise
        if job is None and key in self._unconfirmed:
            job = await self._own_lost_start(job_id, attempt)
        self._unconfirmed.discard(key)
        if job is None:
            DROPPED.inc()
            log.info("launch dropped: the attempt is not ALLOCATED to this worker",
                     extra={"event": "launch-dropped", "job_id": job_id, "attempt": attempt})
            return False
        await self._run(job)
        return True

    async def _own_lost_start(self, job_id: int, attempt: int) -> Job | None:
        """Our earlier start of this attempt committed but its answer was lost: the row says
        RUNNING on this worker, and this process (the only one that could have) never spawned
        it. Start it now rather than leave a RUNNING job with nothing running."""
        job = await self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempt != attempt \
                or job.worker_id != self.worker_id or job_id in self.running:
            return None
        log.warning("the answer to a start was lost; starting the job now",
                    extra={"event": "start-confirmed-late", "job_id": job_id})
        return job

    async def _run(self, job: Job) -> None:
        jobdir = self.jobdir(job)
        try:
            launch = self.plan(job, jobdir)
            proc = await self.start_process(job, jobdir, launch)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in a path or the env
            log.error("could not start the job: %s", e, extra={"job_id": job.id})
            await self._record(job, JobState.FAILED, reason=f"launch failed: {e}"[:200])
            return
        rj = RunningJob(job=job, jobdir=jobdir, proc=proc, launch=launch,
                        tail=self.tail(job, jobdir, launch))
        self._track(rj)
        STARTED.inc()
        requeue = self._cancel_before_start.pop((job.id, job.attempt), None)
        if job.cancel_requested or requeue is False:
            self.stop(rj, JobState.CANCELLED, "cancelled")
        elif job.requeue_requested or requeue:
            self.stop(rj, JobState.CANCELLED, REQUEUE_REASON)

    async def start_process(self, job: Job, jobdir: Path, launch: Launch) -> Spawned:
        """Write the job's directory and script and start its wrapper."""
        # one mkdir per job: on a busy node directory creation is a visible part of the cost
        try:
            os.mkdir(jobdir)
        except FileNotFoundError:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            os.mkdir(jobdir)
        except FileExistsError:
            # left by an earlier cluster on this data directory (ids start again with a new
            # database): its files must not be taken for this attempt's, nor written through
            os.rename(jobdir, jobdir.with_name(f"{jobdir.name}.old-{time.time_ns()}"))
            os.mkdir(jobdir)
        # 0700: executable, like a script its user runs (the wrapper does not exec it itself:
        # it runs the interpreter its #! line names, else bash; see scripts.py)
        fd = os.open(jobdir / "script", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o700)
        with os.fdopen(fd, "w") as f:
            f.write(normalise(job.script))
        env = job_environment(
            base=self.base_env, user_env=job.env, job_id=job.id, attempt=job.attempt,
            cpus=job.cpus, memory_mb=job.memory_mb, name=job.name, submit_dir=job.submit_dir,
            worker_id=self.worker_id, user=job.user, array=job.array,
            array_job_id=job.array_job_id, array_task_id=job.array_task_id)
        return await spawn(jobdir, env, launch)

    def _track(self, rj: RunningJob) -> None:
        self.running[rj.job.id] = rj
        RUNNING.set(len(self.running))
        rj.task = asyncio.create_task(self._supervise(rj),
                                      name=f"job-{rj.job.id}.{rj.job.attempt}")

    # --- supervision ---------------------------------------------------------------------
    async def _supervise(self, rj: RunningJob) -> None:
        job = rj.job
        try:
            status = await self._watch(rj)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug about one job must not leave it RUNNING forever
            log.exception("supervising job %s failed", job.id, extra={"job_id": job.id})
            status, rj.lost_reason = -1, f"the executor lost track of it: {e}"[:200]
        await asyncio.shield(self._finish(rj, status))

    async def _watch(self, rj: RunningJob) -> int:
        job = rj.job
        loop = asyncio.get_running_loop()
        try:
            pid = await rj.proc.child_pid
            if not rj.adopted:
                await self.lifecycle.started(job, pid)
        except ProcessLookupError:
            pass  # the wrapper died before starting the job; its status says so below
        if job.time_limit_s:
            remaining = job.time_limit_s - (time.monotonic() - rj.started)
            rj.timers.append(loop.call_later(max(remaining, 0), self.stop, rj,
                                             JobState.TIMEOUT, "time limit"))
        status = await rj.proc.status
        for t in rj.timers:
            t.cancel()
        if rj.proc.error is not None:
            # never started: what the wrapper says about it is in the job directory
            rj.tail.use_job_directory()
        if status < 0:
            # the wrapper died without reporting: its status file is all we have, and the job
            # may have written it itself
            recorded = read_status(rj.jobdir)
            if recorded.value is not None:
                return recorded.value
            rj.lost_reason = ("its status file is unreadable (the job changed it)"
                              if recorded.tampered else "the job wrapper died")
        return status

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

    async def cancel(self, job_id: int, attempt: int, *, requeue: bool = False) -> bool:
        rj = self.running.get(job_id)
        if rj is None or rj.job.attempt != attempt:
            # the launch may still be on its way: remember, _run() checks
            self._cancel_before_start[(job_id, attempt)] = requeue
            return False
        self.stop(rj, JobState.CANCELLED, REQUEUE_REASON if requeue else "cancelled")
        return True

    async def _finish(self, rj: RunningJob, status: int) -> None:
        job = rj.job
        try:
            pid = rj.proc.child_pid
            if pid.done() and not pid.cancelled() and pid.exception() is None:
                # whatever the script left running in its process group ends with it (an
                # adopted job's pid was checked to be the job's own when it was adopted)
                signal_group(pid.result(), SIGKILL)
            await self.shipper.ship(rj.tail, final=True)
            usage = await self._usage(rj)
        except Exception:  # never let bookkeeping keep the end from being recorded
            log.exception("could not collect job %s's output or usage", job.id,
                          extra={"job_id": job.id})
            usage = Usage()
        exit_code, sig = decode_status(status) if 0 <= status <= 255 else (None, None)
        if rj.stop_state is not None:
            state, reason = rj.stop_state, rj.stop_reason
        elif rj.proc.error is not None:
            state, reason = JobState.FAILED, setup_failure(rj.proc.error, rj.launch)[:200]
        elif status < 0 or status > 255:
            state, reason = JobState.FAILED, rj.lost_reason or "the job wrapper died"
        else:
            state, reason = state_for_exit(exit_code, sig), None
        try:
            await self._record(job, state, exit_code=exit_code, signal=sig, reason=reason,
                               usage=usage)
        finally:
            self.running.pop(job.id, None)
            RUNNING.set(len(self.running))
        log.info("job finished", extra={"event": "job-finished", "job_id": job.id,
                                        "attempt": job.attempt, "state": str(state),
                                        "exit_code": exit_code, "signal": sig})

    async def _usage(self, rj: RunningJob) -> Usage:
        ru = None
        if rj.proc.rusage.done():
            ru = rj.proc.rusage.result()
        elif not rj.adopted:  # the wrapper is reaped within moments of its last report
            with contextlib.suppress(TimeoutError):
                ru = await asyncio.wait_for(asyncio.shield(rj.proc.rusage), timeout=2.0)
        return combine(rj.peak, ru, spawner_peak_kb=rj.proc.spawner_peak_kb)

    async def _record(self, job: Job, state: JobState, *, exit_code: int | None = None,
                      signal: int | None = None, reason: str | None = None,
                      usage: Usage | None = None) -> Ended | None:
        """Through the lifecycle, retried until PostgreSQL answers."""
        delay = 0.2
        while True:
            try:
                ended = await self.lifecycle.finish(job, state, exit_code=exit_code,
                                                    signal=signal, reason=reason, usage=usage)
                break
            except UNAVAILABLE as e:
                log.warning("cannot record the end of job %s yet: %s", job.id, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._remember_end(job)
        if ended is None:
            log.warning("the attempt is no longer ours; its end is not recorded",
                        extra={"job_id": job.id, "attempt": job.attempt})
        FINISHED.labels(str(state)).inc()
        return ended

    def _remember_end(self, job: Job) -> None:
        self._ended[(job.id, job.attempt)] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    # --- output, usage and shutdown ------------------------------------------------------
    async def tend(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Every second: ship new output and sample usage of every running job. One job's
        trouble is logged and skipped; it never stops this loop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            jobs = list(self.running.values())
            self._sample(jobs)
            for rj in jobs:
                try:
                    await self.shipper.ship(rj.tail)
                except Exception:
                    log.exception("shipping job %s's output failed", rj.job.id,
                                  extra={"job_id": rj.job.id})

    def _sample(self, jobs: list[RunningJob]) -> None:
        """One pass over /proc for the jobs that have run a second or more (a shorter one is
        measured by wait4 alone: a busy worker running many short jobs scans nothing)."""
        now = time.monotonic()
        groups = {rj.proc.child_pid.result(): rj for rj in jobs
                  if now - rj.started >= SAMPLE_AFTER_S and rj.proc.child_pid.done()
                  and not rj.proc.child_pid.cancelled()
                  and rj.proc.child_pid.exception() is None}
        if not groups:
            return
        try:
            samples = sample_groups(groups)
        except Exception:
            log.exception("sampling job usage failed")
            return
        for pgid, s in samples.items():
            peak = groups[pgid].peak
            peak.rss_kb = max(peak.rss_kb, s.rss_kb)
            peak.user_s = max(peak.user_s, s.user_s)
            peak.system_s = max(peak.system_s, s.system_s)

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
