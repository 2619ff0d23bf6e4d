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

How the job is kept apart (containment.py, privilege.py): it runs as an unprivileged user when
the executor is root, in a directory private to that user, inside a cgroup of its own where one
can be made (else under a subreaper helper); when it ends, for any reason, whatever it left
running is killed. A job the kernel killed for memory (or, without a memory cgroup, the
watchdog: its sampled RSS over memory_mb) ends OUT_OF_MEMORY.
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
from datetime import datetime
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from services.executor.containment import Isolation, Mode, over_limit
from services.executor.environment import (
    decode_status,
    for_account,
    job_environment,
    shell_exports,
)
from services.executor.launcher import Launcher
from services.executor.output import JobOutputShipper, JobTail
from services.executor.privilege import Account
from services.executor.process import (
    SIGKILL,
    SIGTERM,
    Launch,
    Spawned,
    Wrapper,
    signal_group,
    spawn,
)
from services.executor.scripts import normalise, plan, setup_failure, sources
from services.executor.usage import Sample, Stat, combine, read_stat, scan, total, tree
from shared import clock, failpoints
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
# batch jobs: from a fraction of a second to a day (and +Inf beyond)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200,
               14400, 28800, 43200, 86400)
QUEUE_WAIT = Histogram("scns_job_queue_wait_seconds",
                       "From a job's submission to the start of an attempt (a retried or "
                       "requeued attempt's too), observed by the executor that starts it",
                       buckets=JOB_BUCKETS)
RUN_TIME = Histogram("scns_job_run_seconds", "From an attempt's start to its end, by the "
                     "attempt's terminal state", ["state"], buckets=JOB_BUCKETS)

REQUEUE_REASON = "requeue requested"
RUSAGE_WAIT_S = 10.0  # for the wrapper's wait4 usage (on a busy node it can take a while)
SAMPLE_AFTER_S = 1.0  # jobs younger than this are not sampled (wait4 covers them)
ENDED_MEMORY = 10_000  # attempts this process ended, remembered so an audit never redoes one


def queued_since(job: Job) -> datetime:
    """When the attempt joined the queue. The jobs row keeps no time at which a later attempt
    (a retry, a requeue) became pending, so every attempt counts from the submission."""
    return job.submitted_at


def observe_queue_wait(job: Job) -> None:
    """Once per attempt, by the executor that won its start: both times are PostgreSQL's."""
    if job.started_at is not None:
        QUEUE_WAIT.observe(max((job.started_at - queued_since(job)).total_seconds(), 0.0))


def observe_run_time(job: Job, state: JobState, ended: Ended | None) -> None:
    """Once per attempt, when its end is recorded: from PostgreSQL's start to PostgreSQL's end
    where the row kept it (the job ended), else to now (a new attempt follows, or the attempt
    was no longer ours to end). Labelled with the attempt's end as recorded, when it was."""
    if job.started_at is None:
        return
    end = ended.job.finished_at if ended is not None and not ended.again else None
    elapsed = ((end or clock.utcnow()) - job.started_at).total_seconds()
    RUN_TIME.labels(str(ended.state if ended is not None else state)).observe(max(elapsed, 0.0))


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
    side_tasks: set[asyncio.Task[bool]] = field(default_factory=set)


class Runner:
    def __init__(
        self, *, worker_id: str, data_dir: Path, lifecycle: Lifecycle, jobs: JobStore,
        shipper: JobOutputShipper, base_env: Mapping[str, str], kill_grace_s: float,
        lease_valid: Callable[[], bool] = lambda: True,
        lease_held_since: Callable[[float], bool] = lambda _: True,
        isolation: Isolation | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.data_dir = data_dir.absolute()
        self.launcher: Launcher | None = None
        # absolute: the wrapper changes directory. Until configure(): as the executor's user,
        # no containment (what a Runner built on its own, in a test, gets)
        self.configure(isolation or Isolation(jobs_dir=data_dir.absolute() / "jobs"))
        self.lifecycle = lifecycle
        self.jobs = jobs
        self.shipper = shipper
        self.base_env = dict(base_env)
        self.kill_grace_s = kill_grace_s
        self.lease_valid = lease_valid
        self.lease_held_since = lease_held_since
        self.running: dict[int, RunningJob] = {}
        self._cancel_before_start: dict[tuple[int, int], bool] = {}  # -> requeue?
        self._launching: set[tuple[int, int]] = set()
        # starts this process committed (or may have) without hearing the answer: it never
        # spawned them, so it may still do so (see launch()); each with when it was sent
        self._unconfirmed: dict[tuple[int, int], float] = {}
        self._ended: OrderedDict[tuple[int, int], None] = OrderedDict()

    def configure(self, isolation: Isolation) -> None:
        """How jobs are kept apart (decided at the executor's start-up)."""
        self.isolation = isolation
        self.jobs_dir = isolation.jobs_dir
        c = isolation.containment
        self.wrapper = Wrapper(entry_dirs=tuple(c.entry_dirs()),
                               subreaper=c.mode is Mode.SUBREAPER, setpriv=isolation.setpriv,
                               python=isolation.python)
        # Jobs that run as another user (a root executor) start from the launcher: one fork
        # and one exec each (launcher_proc.py); they cannot signal it. A job running as the
        # executor's own user could, and would take every job's status with it: such jobs
        # keep a wrapper of their own, as do jobs under the subreaper helper (which waits for
        # each job's every descendant).
        self.launcher = None if c.mode is Mode.SUBREAPER or isolation.users.default is None \
            else Launcher(python=isolation.python, log_path=self.data_dir / "launcher.log")

    def jobdir(self, job: Job) -> Path:
        """Named like its cgroup leaf: `<job id>.<attempt>`."""
        return self.jobs_dir / f"{job.id}.{job.attempt}"

    def account(self, job: Job) -> Account | None:
        """The account the job runs as (None: the executor's own)."""
        return self.isolation.users.for_job(job.user)

    def plan(self, job: Job, jobdir: Path) -> Launch:
        return plan(job, jobdir=jobdir, worker_id=self.worker_id)

    def tail(self, job: Job, jobdir: Path, launch: Launch) -> JobTail:
        """Where the job's output is shipped from (scripts.py)."""
        account = self.account(job)
        tail = JobTail(job_id=job.id, attempt=job.attempt, jobdir=jobdir,
                       sources=sources(launch), owner=account.uid if account else None)
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
        sent = time.monotonic()
        try:
            job = await self.lifecycle.start(job_id, attempt, self.worker_id)
            failpoints.raise_once("executor:start-answer-lost",
                                  ConnectionResetError("the answer to the start was lost"))
        except UNAVAILABLE:
            # the start may have committed: if so, the row says RUNNING here and nothing runs;
            # the retried launch (or the audit) finds it through _unconfirmed
            self._unconfirmed.setdefault(key, sent)
            raise
        if job is None and key in self._unconfirmed:
            job = await self._own_lost_start(job_id, attempt)
        sent = self._unconfirmed.pop(key, sent)
        if job is None:
            DROPPED.inc()
            log.info("launch dropped: the attempt is not ALLOCATED to this worker",
                     extra={"event": "launch-dropped", "job_id": job_id, "attempt": attempt})
            return False
        await self.run_fenced(job, sent)
        return True

    async def run_fenced(self, job: Job, sent: float) -> None:
        """Run an attempt whose start (sent at monotonic time `sent`) committed, if this
        worker's lease held from then until now. Otherwise the answer came back after a lapse
        (a partition): the cluster may have declared the worker lost meanwhile and run the job
        again elsewhere, so it must not start here; it ends NODE_FAIL (requeued if it asked),
        guarded by its attempt like any end (shared/fencing.py)."""
        if self.lease_held_since(sent):
            await self._run(job)
            return
        DROPPED.inc()
        log.warning("a start answered after this worker's lease lapsed: not running it",
                    extra={"event": "launch-fenced", "job_id": job.id, "attempt": job.attempt})
        await self._record(job, JobState.NODE_FAIL,
                           reason="the worker's lease lapsed while the job was starting")

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
        """Run an attempt this process won the start of (once per attempt: the start is
        guarded in PostgreSQL, a duplicate delivery never gets here)."""
        observe_queue_wait(job)
        jobdir = self.jobdir(job)
        try:
            launch = self.plan(job, jobdir)
            proc = await self.start_process(job, jobdir, launch)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in a path or the env
            log.error("could not start the job: %s", e, extra={"job_id": job.id})
            with contextlib.suppress(OSError):
                await self.isolation.containment.discard(jobdir.name)
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
        """Write the job's directory and script, make its cgroup, start its wrapper."""
        account = self.account(job)
        # one mkdir per job: on a busy node directory creation is a visible part of the cost.
        # 0700 and, below, the job's user's: private to that user
        try:
            os.mkdir(jobdir, 0o700)
        except FileNotFoundError:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            if account is not None:
                os.chmod(self.jobs_dir, 0o711)
            os.mkdir(jobdir, 0o700)
        except FileExistsError:
            # left by an earlier cluster on this data directory (ids start again with a new
            # database): its files must not be taken for this attempt's, nor written through
            os.rename(jobdir, jobdir.with_name(f"{jobdir.name}.old-{time.time_ns()}"))
            os.mkdir(jobdir, 0o700)
        base = self.base_env if account is None else for_account(
            self.base_env, name=account.name, home=account.home)
        env = job_environment(
            base=base, user_env=job.env, job_id=job.id, attempt=job.attempt,
            cpus=job.cpus, memory_mb=job.memory_mb, name=job.name, submit_dir=job.submit_dir,
            worker_id=self.worker_id, user=job.user, array=job.array,
            array_job_id=job.array_job_id, array_task_id=job.array_task_id)
        # 0700: executable, like a script its user runs (the wrapper does not exec it itself:
        # it runs the interpreter its #! line names, else bash; see scripts.py)
        self._write(jobdir / "script", normalise(job.script), 0o700, account)
        if account is not None and self.launcher is None:
            # what reaches the job's environment through the wrapper, past the root stages
            exports, skipped = shell_exports(env)
            self._write(jobdir / "env", exports, 0o600, account)
            if skipped:
                log.warning("job %s: variables that are not shell names are not passed: %s",
                            job.id, ", ".join(skipped)[:200], extra={"job_id": job.id})
        if account is not None:  # (the launcher gives the environment to the exec itself)
            os.chown(jobdir, account.uid, account.gid)
        await self.isolation.containment.prepare(jobdir.name, memory_mb=job.memory_mb,
                                                 pids_max=self.isolation.pids_max)
        if self.launcher is not None:
            return await self.launcher.spawn(jobdir, env, launch, account=account,
                                             cgroups=self.wrapper.entry_dirs)
        return await spawn(jobdir, env, launch, wrapper=self.wrapper, account=account)

    @staticmethod
    def _write(path: Path, text: str, mode: int, account: Account | None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as f:
            if account is not None:
                os.fchown(fd, account.uid, account.gid)
            f.write(text)

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

    def stop(self, rj: RunningJob, state: JobState, reason: str, *, now: bool = False) -> None:
        """SIGTERM the job's process group now, SIGKILL it after the grace period (`now`: at
        once). Whatever else the job left running is killed when it ends (_finish)."""
        if rj.stop_state is not None:
            return
        rj.stop_state, rj.stop_reason = state, reason
        log.info("stopping job (%s)", reason, extra={"event": "job-stopping", "job_id": rj.job.id,
                                                     "state": str(state)})
        pid = rj.proc.child_pid
        if pid.done():
            self._signal(rj, now)
        else:  # the wrapper has not reported the pid yet: signal as soon as it does
            pid.add_done_callback(lambda _: self._signal(rj, now))

    def _signal(self, rj: RunningJob, now: bool = False) -> None:
        pid = rj.proc.child_pid
        if pid.cancelled() or pid.exception() is not None:
            # an adopted job whose own process is not known for sure: its cgroup is
            if rj.adopted and self.isolation.containment.cgroups is not None:
                task = asyncio.get_running_loop().create_task(
                    self.isolation.containment.cgroups.kill(rj.jobdir.name))
                rj.side_tasks.add(task)
                task.add_done_callback(rj.side_tasks.discard)
            return
        pgid = pid.result()
        if now:
            signal_group(pgid, SIGKILL)
            return
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
        oom = False
        try:
            pid = rj.proc.child_pid
            if pid.done() and not pid.cancelled() and pid.exception() is None:
                # whatever the script left running in its process group ends with it (an
                # adopted job's pid was checked to be the job's own when it was adopted)
                signal_group(pid.result(), SIGKILL)
            # and so does everything else it started, wherever it went (its cgroup)
            oom = await self.isolation.containment.end(rj.jobdir.name)
        except Exception:
            log.exception("could not clean up after job %s", job.id, extra={"job_id": job.id})
        try:
            await self.shipper.ship(rj.tail, final=True)
            usage = await self._usage(rj)
        except Exception:  # never let bookkeeping keep the end from being recorded
            log.exception("could not collect job %s's output or usage", job.id,
                          extra={"job_id": job.id})
            usage = Usage()
        if not self.isolation.containment.enforces_memory and over_limit(
                usage.peak_rss_kb or 0, job.memory_mb):
            oom = True  # the watchdog's measure: it ended before a sample caught it
        exit_code, sig = decode_status(status) if 0 <= status <= 255 else (None, None)
        if rj.stop_state is not None:
            state, reason = rj.stop_state, rj.stop_reason
        elif rj.proc.error is not None:
            state, reason = JobState.FAILED, setup_failure(rj.proc.error, rj.launch)[:200]
        elif oom:
            state, reason = JobState.OUT_OF_MEMORY, f"memory limit ({job.memory_mb} MB) exceeded"
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
        # a job the node failed (it could not start, or its supervision broke) is worth a
        # warning; one that ended by its own exit status is the user's business
        level = logging.WARNING if state is JobState.FAILED and reason else logging.INFO
        log.log(level, "job finished%s", f": {reason}" if reason else "",
                extra={"event": "job-finished", "job_id": job.id, "attempt": job.attempt,
                       "state": str(state), "exit_code": exit_code, "signal": sig})

    async def _usage(self, rj: RunningJob) -> Usage:
        ru = None
        if rj.proc.rusage.done():
            ru = rj.proc.rusage.result()
        elif not rj.adopted:  # the wrapper is reaped within moments of its last report
            with contextlib.suppress(TimeoutError):
                ru = await asyncio.wait_for(asyncio.shield(rj.proc.rusage), timeout=RUSAGE_WAIT_S)
            if ru is None:
                log.warning("no wait4 usage for job %s's wrapper", rj.job.id,
                            extra={"job_id": rj.job.id})
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
        observe_run_time(job, state, ended)
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
        """Sample the jobs that have run a second or more (a shorter one is measured by wait4
        alone: a busy worker running many short jobs scans nothing), and every job the memory
        watchdog must watch (no memory cgroup, a memory limit); kill one over its limit."""
        now = time.monotonic()
        c = self.isolation.containment
        watch = not c.enforces_memory
        table: dict[int, Stat] | None = None
        for rj in jobs:
            pid = rj.proc.child_pid
            if not pid.done() or pid.cancelled() or pid.exception() is not None or not (
                    now - rj.started >= SAMPLE_AFTER_S or (watch and rj.job.memory_mb)):
                continue
            try:
                members = c.procs(rj.jobdir.name)
                if members is not None:
                    s = total(read_stat(p) for p in members if p != rj.proc.wrapper_pid)
                else:
                    table = scan() if table is None else table
                    pids = tree(table, rj.proc.wrapper_pid, pid.result()) \
                        if rj.proc.wrapper_pid > 0 else tree(table, -1, pid.result())
                    s = total(table.get(p) for p in pids)
            except Exception:
                log.exception("sampling job %s's usage failed", rj.job.id,
                              extra={"job_id": rj.job.id})
                continue
            peak = rj.peak
            peak.rss_kb = max(peak.rss_kb, s.rss_kb)
            peak.user_s = max(peak.user_s, s.user_s)
            peak.system_s = max(peak.system_s, s.system_s)
            if watch and over_limit(s.rss_kb, rj.job.memory_mb):
                log.warning("job %s uses %d MB, over its %d MB: killing it", rj.job.id,
                            s.rss_kb // 1024, rj.job.memory_mb or 0,
                            extra={"event": "memory-watchdog", "job_id": rj.job.id})
                self.stop(rj, JobState.OUT_OF_MEMORY,
                          f"memory limit ({rj.job.memory_mb} MB) exceeded", now=True)

    async def sweep_leftovers(self) -> int:
        """Kill and remove the cgroups of jobs this executor does not run (their jobs ended or
        were declared lost while no executor watched): nothing of them survives."""
        c = self.isolation.containment
        swept = 0
        for leaf in sorted(c.leaves()):
            if leaf in self._leaves_in_use():  # asked again: the previous discard awaited
                continue
            log.warning("killing what is left of job %s (no job of this executor's)", leaf,
                        extra={"event": "leftover-killed", "leaf": leaf})
            await c.discard(leaf)
            swept += 1
        return swept

    def _leaves_in_use(self) -> set[str]:
        known = {rj.jobdir.name for rj in self.running.values()}
        known.update(f"{j}.{a}" for j, a in self._launching)
        return known

    async def close(self) -> None:
        """Let go of the launcher (it exits once the jobs it still watches have ended)."""
        if self.launcher is not None:
            await self.launcher.close()

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
