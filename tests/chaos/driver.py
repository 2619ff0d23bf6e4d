"""The chaos driver: jobs run while processes are SIGKILLed, Redis is wiped and PostgreSQL stops.

Used by tests/chaos (a CI-sized run) and bench/chaos.py (long runs). It starts its own Redis and
PostgreSQL (so that it may wipe and stop them), a whole system on them with fast timings, and:

* a submitter that sends N jobs through the HTTP API at a steady pace, retrying when the gateway
  is down or answers 503; every 201 is an *accepted* job. Each job script appends
  `job:attempt` to a marker file (O_APPEND: one line per run), then sleeps a little. Some are
  submitted held, some fail their first attempt and have retries;
* a controller mixing job control into the load: it releases the held jobs after a while,
  holds and later releases some pending ones, and requeues some finished ones (each once);
* a fault injector that, until the submissions are done and at least `faults` were injected,
  picks a fault kind (cycling through all kinds, then at random): SIGKILL and restart an
  executor, the scheduler, the registry, the reconciler or the gateway; restart Redis with its
  data wiped; stop PostgreSQL for a few seconds.

With `partitions`, every executor and the scheduler reach Redis and PostgreSQL through their
own fault-injecting proxies (tests/chaos/proxy.py), and two more fault loops run alongside the
one above: "partition-executor" cuts one executor (sometimes all of them) off from both for
`partition_s`, "partition-scheduler" the scheduler; each heals with its connections reset or
resumed (queued requests delivered late), in turn. The partition lengths straddle the fence's
timeline (shared/fencing.py): some heal before the executor would SIGTERM its jobs, some after
it fenced them but before the cluster may declare them lost, some after. With `skew`, each
service runs with its wall clock off by a few seconds (SCNS_TEST_CLOCK_SKEW_S).

Then it waits for every accepted job to end and checks the promises: none lost, no attempt run
twice, no two attempts of one job ever running at the same time (from the jobs' own marks: each
job holds a per-job flock for its whole life and writes start and end times), allocations in
Redis equal PostgreSQL's unreleased allocations (and are 0 at the end), no job process left
running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import asyncpg
import orjson
import psutil
from redis.asyncio import Redis

from services.cli.up import System
from shared.db.migrate import migrate
from shared.fencing import Fence
from shared.keys import Keys
from shared.localinfra import Server, free_port, start_postgres, start_redis
from shared.settings import Settings
from tests.chaos.proxy import FaultProxy, HealMode

KINDS = ("kill-executor", "kill-scheduler", "kill-registry", "kill-reconciler", "kill-gateway",
         "wipe-redis", "stop-postgres")
PARTITION_KINDS = ("partition-executor", "partition-scheduler")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
# each service's wall-clock offset in the skewed runs (within +-5 s); executors beyond the
# second alternate +2.5 / -2.5
SKEWS = {"executor-chaos-1": 5.0, "executor-chaos-2": -5.0, "scheduler": 3.0,
         "registry": -4.0, "reconciler": 4.5, "gateway": -2.0}
# The timings of every chaos run; they must pass the fence's arithmetic (shared/fencing.py):
# TTL 4 + grace 6 = 10 s until the cluster may run a cut-off worker's jobs again; the executor
# SIGTERMs them at 10 - 1.5 - 0.5 - 2 = 6 s without a renewal, all SIGKILLed by 8 s.
TIMINGS: dict[str, float] = {
    "heartbeat_s": 1.0, "worker_ttl_s": 4.0, "node_fail_grace_s": 6.0, "kill_grace_s": 1.5,
    "fence_margin_s": 2.0, "registry_sweep_s": 0.5, "reconcile_s": 2.0, "repair_grace_s": 2.0,
    "drain_grace_s": 2.0, "scheduler_interval_s": 1.0}


@dataclass
class ChaosConfig:
    jobs: int = 1000
    faults: int = 30
    workers: int = 2
    cpus: int = 8
    submit_seconds: float = 120.0  # submissions are spread over this long
    fault_gap_s: tuple[float, float] = (1.5, 4.0)
    pg_outage_s: tuple[float, float] = (2.0, 4.0)
    requeue_fraction: float = 0.3
    hold_fraction: float = 0.1  # submitted held, released by the controller later
    retry_fraction: float = 0.1  # fail their first attempt, retries=2
    rehold_fraction: float = 0.05  # held by the controller while pending, then released
    requeue_after_fraction: float = 0.05  # requeued by the controller once they finished
    array_every: int = 50  # every Nth submission is also an array of 4-8 elements, %2
    chain_every: int = 40  # every Nth also starts a chain A -> B -> C (afterok)
    settle_timeout_s: float = 240.0
    schedules: int = 5  # `* * * * *` schedules firing through the faults
    seed: int = 1
    # --- partitions and clock skew (off in the plain run) ---
    partitions: bool = False  # executors and the scheduler behind proxies, cut and healed
    skew: bool = False  # each service's wall clock off by SKEWS[name] seconds
    # how long one partition lasts: its lengths cycle through the fence's timeline (healed
    # before TERM, after TERM but before the cluster may declare the worker lost, after that)
    partition_s: tuple[float, float] = (4.0, 14.0)
    partition_gap_s: tuple[float, float] = (1.0, 3.0)  # between two partitions of one kind
    min_partitions: int = 8  # of each kind, at least (they go on while submissions do)
    partition_all_fraction: float = 0.25  # executor partitions that cut every executor off
    long_job_fraction: float = 0.0  # jobs that sleep long_job_s (to be caught by partitions)
    long_job_s: tuple[float, float] = (2.0, 20.0)


@dataclass
class ChaosResult:
    accepted: int = 0
    uncertain: int = 0
    rows: int = 0
    uncertain_created: int = 0
    lost: int = 0
    states: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    double_run_attempts: int = 0
    jobs_with_several_attempts: int = 0
    unexplained_runs: int = 0
    held: int = 0
    held_never_released: int = 0
    reheld: int = 0
    requeued: int = 0
    requeued_without_new_attempt: int = 0
    retry_jobs: int = 0
    retry_jobs_completed_on_attempt_1: int = 0
    arrays: int = 0
    array_elements: int = 0
    array_elements_missing: int = 0
    array_throttle_exceeded: int = 0
    chains: int = 0
    chains_cancelled: int = 0
    dependency_violations: int = 0
    control_conflicts: int = 0
    schedule_fires: int = 0  # fire times owed between creation and the last check
    schedule_fires_during_faults: int = 0
    schedule_fires_lost: int = 0  # owed, but no job (or no run) for it
    schedule_fires_doubled: int = 0  # two jobs for one fire time
    schedule_fires_run_twice: int = 0  # from the jobs' own marks
    overlapping_attempts: int = 0  # runs that started while another run of the job lived
    overlapping_jobs: list[int] = field(default_factory=list)
    marked_runs: int = 0  # runs with a start mark
    long_jobs: int = 0
    partitions: list[dict[str, Any]] = field(default_factory=list)  # one per partition
    partition_executor_all: int = 0  # executor partitions that cut all of them off
    heals: dict[str, int] = field(default_factory=dict)  # by mode
    partition_timeline: dict[str, int] = field(default_factory=dict)  # lengths vs the fence
    proxies: dict[str, dict[str, int]] = field(default_factory=dict)  # each proxy's counters
    skews: dict[str, float] = field(default_factory=dict)
    node_fail_jobs: int = 0  # jobs whose final state is NODE_FAIL
    node_fail_reasons: dict[str, int] = field(default_factory=dict)  # of NODE_FAIL attempts
    fenced_attempts: int = 0  # attempts ended NODE_FAIL 'lease lost' (by their executor)
    fence_events: int = 0  # `fenced` lines in the executors' logs
    declared_lost_attempts: int = 0  # attempts ended NODE_FAIL 'worker ... lost' (reconciler)
    drift_after_faults: int = 0
    final_allocated_cpus: int = 0
    final_unreleased_rows: int = 0
    leftover_processes: int = 0
    services_died: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.uncertain_created == 0 and self.double_run_attempts == 0
                and self.unexplained_runs == 0 and self.held_never_released == 0
                and self.requeued_without_new_attempt == 0
                and self.retry_jobs_completed_on_attempt_1 == 0
                and self.array_elements_missing == 0 and self.array_throttle_exceeded == 0
                and self.dependency_violations == 0
                and self.schedule_fires_lost == 0 and self.schedule_fires_doubled == 0
                and self.schedule_fires_run_twice == 0
                and self.overlapping_attempts == 0
                and self.drift_after_faults == 0 and self.final_allocated_cpus == 0
                and self.final_unreleased_rows == 0 and self.leftover_processes == 0
                and not self.services_died and set(self.states) <= set(TERMINAL))

    def summary(self) -> str:
        return "\n".join([
            f"chaos: {self.accepted} jobs accepted ({self.uncertain} tries lost their answer and "
            f"were retried with their key; jobs made twice {self.uncertain_created}), "
            f"{self.rows} rows, lost {self.lost}, "
            f"in {self.seconds:.0f}s",
            f"  faults injected: {sum(self.faults.values())} "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            "  final states: " + ", ".join(f"{k} {v}" for k, v in sorted(self.states.items())),
            f"  runs {self.runs}; attempts run twice {self.double_run_attempts}; jobs run as "
            f"several attempts {self.jobs_with_several_attempts} (unexplained "
            f"{self.unexplained_runs})",
            f"  control: {self.held} submitted held ({self.held_never_released} never released), "
            f"{self.reheld} held while pending, {self.requeued} requeued "
            f"({self.requeued_without_new_attempt} without a new attempt), {self.retry_jobs} "
            f"with retries ({self.retry_jobs_completed_on_attempt_1} completed on attempt 1), "
            f"{self.control_conflicts} controls refused as too late (409)",
            f"  arrays: {self.arrays} ({self.array_elements} elements, missing "
            f"{self.array_elements_missing}, throttle exceeded {self.array_throttle_exceeded}); "
            f"chains: {self.chains} ({self.chains_cancelled} cancelled after a failed head), "
            f"dependency violations {self.dependency_violations}",
            f"  schedules: {self.schedule_fires} fire times owed "
            f"({self.schedule_fires_during_faults} while faults were injected), lost "
            f"{self.schedule_fires_lost}, made twice {self.schedule_fires_doubled}, run twice "
            f"{self.schedule_fires_run_twice}",
            f"  overlapping attempts {self.overlapping_attempts} (from the jobs' flocks and "
            f"start/end marks, {self.marked_runs} runs marked"
            + (f"; jobs {self.overlapping_jobs[:20]}" if self.overlapping_jobs else "") + ")",
            *self._partition_lines(),
            f"  drift after the last fault {self.drift_after_faults}; final allocated CPUs "
            f"{self.final_allocated_cpus}, unreleased rows {self.final_unreleased_rows}; "
            f"job processes left {self.leftover_processes}",
            f"  services that died on their own (crash loop): {self.services_died or 'none'}",
            f"  verdict: {'PASS' if self.ok else 'FAIL'}",
            *[f"  note: {n}" for n in self.notes],
        ])

    def _partition_lines(self) -> list[str]:
        out = [f"  NODE_FAIL: {self.node_fail_jobs} jobs ended so; attempts fenced by their "
               f"executor ('lease lost') {self.fenced_attempts} ({self.fence_events} `fenced` "
               f"events in the executors' logs), declared lost by the reconciler ('worker ... "
               f"lost') {self.declared_lost_attempts}; all NODE_FAIL attempts by reason: "
               + (", ".join(f"{k!r} {v}" for k, v in sorted(self.node_fail_reasons.items()))
                  or "none")]
        if self.partitions:
            out.append(
                f"  partitions: {len(self.partitions)} ({self.partition_executor_all} of every "
                "executor at once); healed by "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.heals.items()))
                + "; lengths against the fence: "
                + ", ".join(f"{k} {v}" for k, v in self.partition_timeline.items())
                + f"; {self.long_jobs} long jobs")
            held = sum(p["held"] for p in self.proxies.values())
            reset = sum(p["reset"] for p in self.proxies.values())
            resumed = sum(p["resumed"] for p in self.proxies.values())
            accepted = sum(p["accepted"] for p in self.proxies.values())
            up = sum(p["bytes_up"] for p in self.proxies.values())
            down = sum(p["bytes_down"] for p in self.proxies.values())
            out.append(f"  proxies: {len(self.proxies)}, {accepted} connections, {held} held "
                       f"by a cut ({reset} reset, {resumed} resumed), {up / 1e6:.1f} MB up, "
                       f"{down / 1e6:.1f} MB down")
        if self.skews:
            out.append("  clock skew: " + ", ".join(f"{k} {v:+g}s"
                                                    for k, v in sorted(self.skews.items())))
        return out


class Chaos:
    def __init__(self, cfg: ChaosConfig, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.work = workdir or Path(tempfile.mkdtemp(prefix="scns-chaos-"))
        os.chmod(self.work, 0o755)  # PostgreSQL runs as another user when we are root
        self.marker = self.work / "marker"
        self.sched_marker = self.work / "schedule-marker"
        self.marks = self.work / "marks"  # start/end of each run, with times
        self.overlaps = self.work / "overlaps"  # runs that found their job's lock taken
        self.locks = self.work / "locks"  # one lock file per job
        self.locks.mkdir()
        os.chmod(self.locks, 0o777)
        for m in (self.marker, self.sched_marker, self.marks, self.overlaps):
            m.touch()
            os.chmod(m, 0o666)  # jobs run as nobody when the executor is root
        flock = shutil.which("flock")
        if flock is None:
            raise RuntimeError("the chaos driver needs flock(1) (util-linux)")
        self.flock = flock
        self.prng = random.Random(cfg.seed + 1_000)  # the partition loops' own
        self.proxies: dict[str, dict[str, FaultProxy]] = {}  # child -> redis/pg -> proxy
        self._heals: collections.Counter[str] = collections.Counter()  # by kind
        self.redis_port = free_port()
        self.redis_server: Server | None = None
        self.pg_server: Server | None = None
        self.pg_port = 0
        self.system: System | None = None
        self.keys = Keys("{chaos}:")
        self.result = ChaosResult()
        self.accepted: list[int] = []
        self._submitting = True
        self.held: list[int] = []
        self.released: set[int] = set()
        self.pinned: list[int] = []  # the head submitted held and its dependent (_pinned_hold)
        self.retrying: list[int] = []
        self.requeued: dict[int, int] = {}  # job -> the attempt that was requeued
        self.arrays: dict[int, int] = {}  # array id -> its size (throttle 2)
        self.chains: list[tuple[int, int, int, bool]] = []  # A, B, C, A fails
        self.schedules: dict[int, datetime] = {}  # schedule -> its first fire time
        self.faults_ended_at = datetime.max.replace(tzinfo=UTC)

    # --- servers -------------------------------------------------------------------------
    def _start_redis(self, wipe: bool) -> None:
        data = self.work / "redis"
        if wipe:
            shutil.rmtree(data, ignore_errors=True)
        self.redis_server = start_redis(data, port=self.redis_port)

    def _start_postgres(self) -> None:
        self.pg_server = start_postgres(self.work / "pg", port=self.pg_port or None,
                                        durable=False)
        self.pg_port = int(self.pg_server.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def db_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def executor_names(self) -> list[str]:
        """The executors' child names, as System names them."""
        if self.cfg.workers == 1:
            return ["executor"]
        return [f"executor-chaos-{i}" for i in range(1, self.cfg.workers + 1)]

    def settings(self) -> Settings:
        assert self.redis_server is not None
        settings = Settings(
            redis_url=self.redis_server.url, database_url=self.db_url,
            key_prefix=self.keys.prefix, worker_id="chaos", gateway_port=free_port(),
            data_dir=self.work / "sys", claim_idle_ms=2000, log_format="text",
            log_level="INFO", **TIMINGS)  # type: ignore[arg-type]
        problems = Fence.of(settings).problems()
        if problems:
            raise RuntimeError(f"the chaos timings fail the fence: {problems}")
        return settings

    def _skews(self) -> dict[str, float]:
        if not self.cfg.skew:
            return {}
        out = {k: v for k, v in SKEWS.items() if not k.startswith("executor")}
        for i, name in enumerate(self.executor_names):
            out[name] = SKEWS.get(name, 2.5 if i % 2 == 0 else -2.5)
        return out

    def _child_env(self) -> dict[str, dict[str, str]]:
        """Each partitionable child's own proxies (one for Redis, one for PostgreSQL), and
        each child's clock skew."""
        out: dict[str, dict[str, str]] = collections.defaultdict(dict)
        if self.cfg.partitions:
            for name in [*self.executor_names, "scheduler"]:
                redis = FaultProxy(self.redis_port, name=f"{name}-redis").start()
                pg = FaultProxy(self.pg_port, name=f"{name}-pg").start()
                self.proxies[name] = {"redis": redis, "pg": pg}
                out[name] |= {"SCNS_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                              "SCNS_DATABASE_URL":
                                  f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"}
        for name, skew in self._skews().items():
            out[name]["SCNS_TEST_CLOCK_SKEW_S"] = f"{skew:g}"
        self.result.skews = self._skews()
        return dict(out)

    def start(self) -> str:
        self._start_redis(wipe=True)
        self._start_postgres()
        asyncio.run(migrate(self.db_url))
        settings = self.settings()
        env = {**os.environ, "SCNS_REDIS_URL": settings.redis_url,
               "SCNS_DATABASE_URL": settings.database_url}
        self.system = System(settings, env, workers=self.cfg.workers, cpus=self.cfg.cpus,
                             echo=False, child_env=self._child_env())
        return self.system.start()

    def stop(self) -> None:
        if self.system is not None:
            self.system.stop()
        for pair in self.proxies.values():
            for proxy in pair.values():
                with contextlib.suppress(Exception):
                    self.result.proxies[proxy.name] = proxy.stats().as_dict()
                proxy.stop()
        for server in (self.redis_server, self.pg_server):
            if server is not None:
                server.stop()

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- faults --------------------------------------------------------------------------
    async def inject(self, kind: str) -> None:
        assert self.system is not None
        sysm = self.system
        self.result.faults[kind] = self.result.faults.get(kind, 0) + 1
        if kind.startswith("kill-"):
            service = kind.removeprefix("kill-")
            names = [c.name for c in sysm.children if c.name.startswith(service)]
            name = self.rng.choice(names)
            await asyncio.to_thread(sysm.kill, name, signal.SIGKILL)
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            await asyncio.to_thread(sysm.restart, name)
        elif kind == "wipe-redis":
            assert self.redis_server is not None
            self.redis_server.process.kill()
            self.redis_server.process.wait()
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            await asyncio.to_thread(self._start_redis, True)
        elif kind == "stop-postgres":
            assert self.pg_server is not None
            await asyncio.to_thread(self.pg_server.stop)
            await asyncio.sleep(self.rng.uniform(*self.cfg.pg_outage_s))
            await asyncio.to_thread(self._start_postgres)

    async def faults(self) -> None:
        n = 0
        while self._submitting or n < self.cfg.faults:
            await asyncio.sleep(self.rng.uniform(*self.cfg.fault_gap_s))
            kind = KINDS[n % len(KINDS)] if n < 2 * len(KINDS) else self.rng.choice(KINDS)
            await self.inject(kind)
            n += 1

    async def partition_faults(self, kind: Literal["partition-executor",
                                                   "partition-scheduler"]) -> None:
        """One kind of partition after another (the other kind and the faults above go on
        meanwhile), while submissions go on and until `min_partitions` were made."""
        n = 0
        while self._submitting or n < self.cfg.min_partitions:
            await asyncio.sleep(self.prng.uniform(*self.cfg.partition_gap_s))
            await self.partition(kind, self._partition_length(n))
            n += 1

    def _fence(self) -> Fence:
        assert self.system is not None
        return Fence.of(self.system.settings)

    def _timeline(self) -> list[tuple[str, float, float]]:
        """The stretches of the fence's timeline a partition's length may fall in, each with
        a heartbeat's slack (the last renewal came up to a heartbeat before the cut)."""
        f, hb = self._fence(), TIMINGS["heartbeat_s"]
        return [("healed before TERM", 0.0, f.term_after_s - hb),
                ("healed after TERM, before lost", f.term_after_s + 0.5,
                 f.lost_after_s - hb - 0.5),
                ("healed after lost", f.lost_after_s + 0.5, float("inf"))]

    def _partition_length(self, n: int) -> float:
        """The n-th partition of a kind: in the n-th stretch of the timeline (in turn), within
        `partition_s`; anywhere in `partition_s` when that stretch is outside it."""
        lo, hi = self.cfg.partition_s
        _, a, b = self._timeline()[n % 3]
        a, b = max(a, lo), min(b, hi)
        return self.prng.uniform(a, b) if a < b else self.prng.uniform(lo, hi)

    async def partition(self, kind: Literal["partition-executor", "partition-scheduler"],
                        seconds: float) -> None:
        """Cut some children off from Redis and PostgreSQL both for `seconds`, then heal:
        resetting the held connections, or resuming them, in turn."""
        r = self.result
        if kind == "partition-executor":
            names = self.executor_names
            every = len(names) > 1 and self.prng.random() < self.cfg.partition_all_fraction
            targets = list(names) if every else [self.prng.choice(names)]
            r.partition_executor_all += every
        else:
            targets = ["scheduler"]
        # each kind heals by reset and resume in turn, and its lengths cycle through three
        # stretches: every pairing of the two comes within six partitions of a kind
        mode: HealMode = ("reset", "resume")[self._heals[kind] % 2]
        self._heals[kind] += 1
        proxies = [p for t in targets for p in self.proxies[t].values()]
        r.faults[kind] = r.faults.get(kind, 0) + 1
        cut_at = time.time()
        await asyncio.gather(*(asyncio.to_thread(p.cut) for p in proxies))
        await asyncio.sleep(seconds)
        await asyncio.gather(*(asyncio.to_thread(p.heal, mode) for p in proxies))
        r.heals[mode] = r.heals.get(mode, 0) + 1
        when = next((name for name, a, b in self._timeline() if a <= seconds < b),
                    "borderline")
        r.partition_timeline[when] = r.partition_timeline.get(when, 0) + 1
        r.partitions.append({"kind": kind, "targets": targets, "seconds": round(seconds, 2),
                             "heal": mode, "cut_at": round(cut_at, 3), "timeline": when})

    # --- load ----------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        assert self.system is not None
        return {"Authorization": f"Bearer {self.system.admin_token}"}

    async def submit_all(self, url: str) -> None:
        gap = self.cfg.submit_seconds / max(self.cfg.jobs, 1)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(url, timeout=timeout, headers=self._auth()) as s:
            for i in range(self.cfg.jobs):
                sleep = self.rng.choice(['0', '0.1', '0.3', '0.5', '1'])
                cpus = self.rng.choice([1, 1, 1, 2, 4])
                if self.cfg.long_job_fraction and \
                        self.prng.random() < self.cfg.long_job_fraction:
                    # long enough to be running when a partition comes
                    sleep, cpus = f"{self.prng.uniform(*self.cfg.long_job_s):.1f}", 1
                    self.result.long_jobs += 1
                body: dict[str, Any] = {
                    "script": self._preamble()
                              + f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {self.marker}\n'
                              f"sleep {sleep}\n",
                    "cpus": cpus,
                    "requeue": self.rng.random() < self.cfg.requeue_fraction,
                    "name": f"chaos-{i}"}
                kind = self.rng.random()
                if kind < self.cfg.hold_fraction:
                    body["hold"] = True
                elif kind < self.cfg.hold_fraction + self.cfg.retry_fraction:
                    body["script"] += '[ "$SCNS_ATTEMPT" -ge 2 ] || exit 3\n'
                    body |= {"retries": 2, "retry_delay_s": self.rng.choice([0, 1])}
                job_id = await self._submit_one(s, body, key=f"chaos-{self.cfg.seed}-{i}")
                if body.get("hold"):
                    self.held.append(job_id)
                elif "retries" in body:
                    self.retrying.append(job_id)
                if i % self.cfg.array_every == 1:
                    await self._submit_array(s, i)
                if i % self.cfg.chain_every == 2:
                    await self._submit_chain(s, i)
                await asyncio.sleep(gap)
        self._submitting = False

    def _preamble(self) -> str:
        """The start of every job script: take the job's own lock for the script's whole life
        (fd 9, inherited by everything it starts; released only when the last process holding
        it dies, SIGKILL included), noting a run that finds it taken, i.e. another run of the
        same job still alive; then a start mark now and an end mark on the way out."""
        return (f'exec 9>>"{self.locks}/$SCNS_JOB_ID"\n'
                f'{self.flock} -n 9 || echo "$SCNS_JOB_ID:$SCNS_ATTEMPT $(date +%s.%N)" '
                f">> {self.overlaps}\n"
                f'echo "start $SCNS_JOB_ID $SCNS_ATTEMPT $(date +%s.%N)" >> {self.marks}\n'
                f"trap 'echo \"end $SCNS_JOB_ID $SCNS_ATTEMPT $(date +%s.%N)\" >> "
                f"{self.marks}' EXIT\n")

    def _script(self, extra: str = "") -> str:
        return (self._preamble() + f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {self.marker}\n'
                f"sleep {self.rng.choice(['0.1', '0.3', '0.5'])}\n{extra}")

    async def _submit_array(self, s: aiohttp.ClientSession, i: int) -> None:
        """An array of 4-8 elements, at most 2 at once (not touched by the controller)."""
        size = self.rng.randint(4, 8)
        body = {"script": self._script(), "array": f"0-{size - 1}%2", "requeue": True,
                "name": f"chaos-array-{i}"}
        array_id = await self._submit_one(s, body, key=f"chaos-{self.cfg.seed}-array-{i}",
                                          accept=False)
        self.arrays[array_id] = size

    async def _submit_chain(self, s: aiohttp.ClientSession, i: int) -> None:
        """A -> B -> C, each afterok the one before; one chain in four has a head that fails
        (then B and C end CANCELLED, DependencyNeverSatisfied)."""
        fails = self.rng.random() < 0.25
        ids: list[int] = []
        for link in "abc":
            body: dict[str, Any] = {"script": self._script("exit 1\n" if fails and not ids
                                                           else ""),
                                    "requeue": True, "name": f"chaos-chain-{i}-{link}"}
            if ids:
                body["dependency"] = f"afterok:{ids[-1]}"
            ids.append(await self._submit_one(s, body, key=f"chaos-{self.cfg.seed}-{i}{link}",
                                              accept=False))
        self.chains.append((ids[0], ids[1], ids[2], fails))

    async def _submit_one(self, s: aiohttp.ClientSession, body: dict[str, Any], *,
                          key: str, accept: bool = True) -> int:
        """Submit until answered. A try whose answer was lost (sent, then the gateway died)
        is retried with the same Idempotency-Key: it must return the job the lost try made,
        if it made one, and never make a second (checked by `uncertain_created`)."""
        delay = 0.2
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        while True:
            try:
                async with s.post("/api/v1/jobs", data=orjson.dumps(body), headers=headers) as r:
                    if r.status in (200, 201):
                        job_id: int = (await r.json())["id"]
                        if accept:
                            self.accepted.append(job_id)
                        return job_id
                    if r.status != 503:
                        raise RuntimeError(f"submit refused: {r.status} {await r.text()}")
            except aiohttp.ClientConnectorError:
                pass  # the gateway is down: nothing was sent, retry
            except (aiohttp.ClientError, TimeoutError):
                self.result.uncertain += 1  # sent, answer lost: retry with the same key
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- schedules firing through the faults -------------------------------------------
    async def _send(self, s: aiohttp.ClientSession, method: str, path: str,
                    body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One call with a JSON body, repeated until it gets an answer other than 503."""
        delay = 0.2
        while True:
            try:
                async with s.request(method, path, json=body) as r:
                    if r.status != 503:
                        return r.status, await r.json()
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def add_schedules(self, url: str) -> None:
        """Schedules that fire every minute, each fire owed (catch_up=all, concurrency=allow):
        exactly one job per fire time whatever the faults do."""
        script = (f'echo "$SCNS_SCHEDULE_ID $SCNS_SCHEDULE_FIRE_TIME $SCNS_JOB_ID" '
                  f">> {self.sched_marker}\nsleep 0.2\n")
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=15),
                                         headers=self._auth()) as s:
            for i in range(self.cfg.schedules):
                name = f"chaos-{i}"
                status, body = await self._send(s, "POST", "/api/v1/schedules", {
                    "name": name, "cron": "* * * * *", "concurrency": "allow",
                    "catch_up": "all", "max_failures": 0,
                    "job": {"script": script, "name": f"chaos-cron-{i}"}})
                if status == 409:  # a lost answer: the first try made it
                    _, page = await self._send(s, "GET", f"/api/v1/schedules?name={name}")
                    body = page["items"][0]
                elif status != 201:
                    raise RuntimeError(f"schedule refused: {status} {body}")
                self.schedules[body["id"]] = datetime.fromisoformat(body["next_run_at"])

    async def stop_schedules(self, url: str) -> None:
        """Once every fire time up to now was made, disable them (their jobs can then end
        before the final checks)."""
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=15),
                                         headers=self._auth()) as s:
            deadline = time.monotonic() + 120
            for sid in self.schedules:
                while time.monotonic() < deadline:
                    _, body = await self._send(s, "GET", f"/api/v1/schedules/{sid}")
                    if datetime.fromisoformat(body["next_run_at"]) > datetime.now(UTC):
                        break
                    await asyncio.sleep(0.5)
            for sid in self.schedules:
                await self._send(s, "POST", f"/api/v1/schedules/{sid}/disable")

    async def _check_schedules(self, conn: asyncpg.Connection[Any]) -> None:
        """Every minute from a schedule's first fire time to the first it did not make has
        exactly one run with exactly one job (from the jobs' own fire-time variable), and no
        fire time's job ran twice (from the jobs' own marks)."""
        r = self.result
        marks = collections.Counter(
            tuple(line.split()[:2]) for line in self.sched_marker.read_text().splitlines()
            if line.strip())
        r.schedule_fires_run_twice = sum(1 for n in marks.values() if n > 1)
        for sid, first in self.schedules.items():
            # the first fire time it did not make (disabled then: the API shows none)
            until = await conn.fetchval("SELECT next_run_at FROM schedules WHERE id = $1", sid)
            owed, at = [], first
            while at < until:
                owed.append(at)
                at += timedelta(minutes=1)
            r.schedule_fires += len(owed)
            r.schedule_fires_during_faults += sum(1 for t in owed if t <= self.faults_ended_at)
            made = collections.Counter(x["t"] for x in await conn.fetch(
                "SELECT env->>'SCNS_SCHEDULE_FIRE_TIME' AS t FROM jobs WHERE schedule_id = $1",
                sid))
            runs = {x["fire_at"] for x in await conn.fetch(
                "SELECT fire_at FROM schedule_runs WHERE schedule_id = $1 AND job_id IS NOT "
                "NULL", sid)}
            for t in owed:
                key = t.astimezone(UTC).isoformat().replace("+00:00", "Z")
                r.schedule_fires_lost += made[key] == 0 or t not in runs
                r.schedule_fires_doubled += made[key] > 1
            extra = set(made) - {t.astimezone(UTC).isoformat().replace("+00:00", "Z")
                                 for t in owed}
            if extra:  # a job for a fire time it should not have made
                r.schedule_fires_doubled += len(extra)
                r.notes.append(f"schedule {sid}: jobs for unexpected fire times {extra}")

    # --- job control mixed into the load ------------------------------------------------
    async def _call(self, s: aiohttp.ClientSession, method: str, path: str
                    ) -> tuple[int, dict[str, Any]] | None:
        """One API call; None when it got no answer (the gateway is down or died mid-call)."""
        try:
            async with s.request(method, path) as r:
                if r.status == 503:
                    return None
                return r.status, await r.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _until_answered(self, s: aiohttp.ClientSession, method: str, path: str
                              ) -> tuple[int, dict[str, Any]]:
        delay = 0.2
        while True:
            answer = await self._call(s, method, path)
            if answer is not None:
                return answer
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _release(self, s: aiohttp.ClientSession, job_id: int) -> None:
        """Release is idempotent: repeat until answered. A 409 means the job is no longer
        pending, which it only gets to once released."""
        status, _ = await self._until_answered(s, "POST", f"/api/v1/jobs/{job_id}/release")
        if status == 200:
            self.released.add(job_id)
        elif status == 409:
            self.result.control_conflicts += 1
            self.released.add(job_id)

    async def _requeue(self, s: aiohttp.ClientSession, job_id: int) -> None:
        """Requeue a finished job once: before each try, look whether a lost try did it."""
        status, job = await self._until_answered(s, "GET", f"/api/v1/jobs/{job_id}")
        if status != 200 or job["state"] not in TERMINAL:
            return
        seen = job["attempt"]
        while True:
            answer = await self._call(s, "POST", f"/api/v1/jobs/{job_id}/requeue")
            if answer is not None:
                if answer[0] == 200:
                    self.requeued[job_id] = seen
                elif answer[0] == 409:
                    self.result.control_conflicts += 1
                return
            await asyncio.sleep(0.5)
            _, job = await self._until_answered(s, "GET", f"/api/v1/jobs/{job_id}")
            if job["attempt"] > seen:  # the lost try went through
                self.requeued[job_id] = seen
                return

    async def _pinned_hold(self, s: aiohttp.ClientSession) -> int:
        """Hold and release a job that is certainly PENDING, whatever the machine's speed: it
        depends on a head submitted held, so neither can start before the head is released.
        (The random holds below land only on jobs still pending, which a fast machine may
        never leave.) Returns the dependent, to be requeued once it has ended."""
        key = f"chaos-{self.cfg.seed}-pinned"
        head = await self._submit_one(s, {"script": self._script(), "hold": True,
                                          "requeue": True, "name": "chaos-pinned-head"},
                                      key=f"{key}-head", accept=False)
        self.pinned.append(head)
        job_id = await self._submit_one(s, {"script": self._script(), "requeue": True,
                                            "dependency": f"afterok:{head}",
                                            "name": "chaos-pinned"}, key=key, accept=False)
        self.pinned.append(job_id)
        status, job = await self._until_answered(s, "POST", f"/api/v1/jobs/{job_id}/hold")
        if status == 200 and job["reason"] == "Held":
            self.result.reheld += 1
        else:
            self.result.notes.append(f"hold of pending job {job_id}: {status} {job}")
        await self._release(s, job_id)
        await self._release(s, head)
        return job_id

    async def _requeue_once_ended(self, s: aiohttp.ClientSession, job_id: int) -> None:
        """Wait for the job to end, then requeue it (it must run again)."""
        while True:
            status, job = await self._until_answered(s, "GET", f"/api/v1/jobs/{job_id}")
            if status == 200 and job["state"] in TERMINAL:
                break
            await asyncio.sleep(1.0)
        await self._requeue(s, job_id)
        if job_id not in self.requeued:
            self.result.notes.append(f"requeue of ended job {job_id} was refused")

    async def control(self, url: str) -> None:
        """Until the submissions are done: release held jobs a little after their submit,
        hold and release some pending ones, requeue some finished ones. Then release whatever
        is still held, so that every accepted job can end. One hold and one requeue are
        certain to land (`_pinned_hold`), the others depend on what the jobs are doing."""
        timeout = aiohttp.ClientTimeout(total=15)
        released_upto = 0
        touched: set[int] = set()
        async with aiohttp.ClientSession(url, timeout=timeout, headers=self._auth()) as s:
            pinned = await self._pinned_hold(s)
            while self._submitting:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5))
                for job_id in self.held[released_upto:max(released_upto, len(self.held) - 2)]:
                    await self._release(s, job_id)
                    released_upto += 1
                # with partitions the scheduler is cut off much of the time: recent jobs are
                # seldom finished yet, so requeues look further back
                window = 300 if self.cfg.partitions else 60
                candidates = [j for j in self.accepted[-window:] if j not in touched]
                if not candidates:
                    continue
                job_id = self.rng.choice(candidates)
                touched.add(job_id)
                if self.rng.random() < 0.5:
                    status, job = await self._until_answered(
                        s, "POST", f"/api/v1/jobs/{job_id}/hold")
                    if status == 200 and job["reason"] == "Held":
                        self.result.reheld += 1
                        await asyncio.sleep(self.rng.uniform(0.1, 1.0))
                        await self._release(s, job_id)
                    elif status == 409:
                        self.result.control_conflicts += 1
                else:
                    await self._requeue(s, job_id)
            for job_id in self.held[released_upto:]:
                await self._release(s, job_id)
            await self._requeue_once_ended(s, pinned)

    # --- the run -------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        started = time.monotonic()
        try:
            # inside the try: a system that fails to start is stopped too (with the servers
            # and proxies already started)
            url = await asyncio.to_thread(self.start)
            await self.add_schedules(url)
            partitions = [self.partition_faults("partition-executor"),
                          self.partition_faults("partition-scheduler")] \
                if self.cfg.partitions else []
            await asyncio.gather(self.submit_all(url), self.faults(), self.control(url),
                                 *partitions)
            last_fault = time.monotonic()
            self.faults_ended_at = datetime.now(UTC)
            await self.stop_schedules(url)
            await self._settle()
            await self._check(last_fault)
            assert self.system is not None
            # every service survived every fault it was not the target of
            self.result.services_died = [c.name for c in self.system.children
                                         if c.proc.poll() is not None]
        finally:
            await asyncio.to_thread(self.stop)
            self.result.leftover_processes = len(self._job_processes())
        # every job process is dead now: their last marks are in
        before = self.result.overlapping_attempts
        self.result.overlapping_attempts, self.result.overlapping_jobs = self._overlaps()
        if self.result.overlapping_attempts > before:
            self.result.notes.append(
                f"{self.result.overlapping_attempts - before} overlapping runs showed up only "
                "after the system stopped")
        self.result.seconds = time.monotonic() - started
        return self.result

    async def _db(self) -> asyncpg.Connection[Any]:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn: asyncpg.Connection[Any] = await asyncpg.connect(self.db_url)
                return conn
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _settle(self) -> None:
        conn = await self._db()
        try:
            deadline = time.monotonic() + self.cfg.settle_timeout_s
            while True:
                left = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE (id = ANY($1) OR array_job_id = ANY($3)"
                    " OR schedule_id IS NOT NULL) AND NOT (state = ANY($2))",
                    self._all_ids(), list(TERMINAL), list(self.arrays))
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    self.result.notes.append(f"{left} accepted jobs still not finished")
                    return
                await asyncio.sleep(1)
        finally:
            await conn.close()

    def _all_ids(self) -> list[int]:
        return self.accepted + self.pinned + [j for chain in self.chains for j in chain[:3]]

    async def _check_groups(self, conn: asyncpg.Connection[Any]) -> None:
        """Arrays: every element there and ended, never more than 2 running at once (from the
        attempts' start and end times). Chains: each link started only after the one before
        it COMPLETED; after a failed head, the rest CANCELLED without running."""
        r = self.result
        r.arrays, r.chains = len(self.arrays), len(self.chains)
        for array_id, size in self.arrays.items():
            n = await conn.fetchval("SELECT count(*) FROM jobs WHERE array_job_id = $1",
                                    array_id)
            r.array_elements += n
            r.array_elements_missing += size - n
            spans = await conn.fetch(
                "SELECT a.started_at AS s, a.finished_at AS f FROM attempts a JOIN jobs j "
                "ON j.id = a.job_id WHERE j.array_job_id = $1 AND a.started_at IS NOT NULL",
                array_id)
            points = sorted([(x["s"], 1) for x in spans]
                            + [(x["f"], -1) for x in spans if x["f"] is not None],
                            key=lambda p: (p[0], p[1]))
            running = peak = 0
            for _, step in points:
                running += step
                peak = max(peak, running)
            r.array_throttle_exceeded += peak > 2
        for a, b, c, fails in self.chains:
            rows = {x["id"]: x for x in await conn.fetch(
                "SELECT j.id, j.state, j.reason, j.finished_at, min(a.started_at) AS first "
                "FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.started_at IS NOT "
                "NULL WHERE j.id = ANY($1) GROUP BY j.id", [a, b, c])}
            if fails:
                r.chains_cancelled += 1
                bad = rows[a]["state"] == "COMPLETED" or any(
                    rows[x]["state"] != "CANCELLED" or rows[x]["first"] is not None
                    or rows[x]["reason"] != "DependencyNeverSatisfied" for x in (b, c))
            else:
                bad = any(rows[x]["state"] != "COMPLETED" for x in (a, b, c)) or any(
                    rows[later]["first"] is None or rows[later]["first"] < rows[before][
                        "finished_at"] for before, later in ((a, b), (b, c)))
            r.dependency_violations += bad
            if bad:
                r.notes.append(f"chain {a}->{b}->{c}: {[dict(rows[x]) for x in (a, b, c)]}")

    async def _check(self, last_fault: float) -> None:
        assert self.redis_server is not None and self.system is not None
        r = self.result
        conn = await self._db()
        redis = Redis.from_url(self.redis_server.url, decode_responses=True)
        try:
            rows = await conn.fetch("SELECT id, state, attempt FROM jobs WHERE id = ANY($1) "
                                    "OR array_job_id = ANY($2)", self._all_ids(),
                                    list(self.arrays))
            r.accepted = len(self.accepted)
            r.rows = len(rows)
            r.lost = len(set(self._all_ids()) - {x["id"] for x in rows})
            await self._check_groups(conn)
            await self._check_schedules(conn)
            r.states = dict(collections.Counter(x["state"] for x in rows))
            r.uncertain_created = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE schedule_id IS NULL") - r.rows
            attempts = {x["id"]: x["attempt"] for x in rows}
            lines = self.marker.read_text().split() if self.marker.exists() else []
            r.runs = len(lines)
            counts = collections.Counter(lines)
            r.double_run_attempts = sum(1 for n in counts.values() if n > 1)
            per_job: dict[int, set[int]] = collections.defaultdict(set)
            for line in counts:
                job, _, attempt = line.partition(":")
                per_job[int(job)].add(int(attempt))
            r.jobs_with_several_attempts = sum(1 for a in per_job.values() if len(a) > 1)
            # a run is explained when its attempt number is one the record reached
            r.unexplained_runs = sum(1 for job, a in per_job.items()
                                     if job in attempts and max(a) > attempts[job])
            finals = {x["id"]: x["state"] for x in rows}
            r.held = len(self.held)
            r.held_never_released = len(set(self.held + self.pinned) - self.released)
            r.requeued = len(self.requeued)
            r.requeued_without_new_attempt = sum(1 for j, a in self.requeued.items()
                                                 if attempts.get(j, 0) <= a)
            r.retry_jobs = len(self.retrying)
            # they fail their first attempt: a COMPLETED one must have gone on to another
            r.retry_jobs_completed_on_attempt_1 = sum(
                1 for j in self.retrying if finals.get(j) == "COMPLETED" and attempts[j] < 2)
            # allocations: Redis must equal PostgreSQL within one reconcile period after the
            # last fault, and be 0 now that everything ended
            await asyncio.sleep(max(0.0, last_fault + 2 * self.system.settings.reconcile_s
                                    - time.monotonic()))
            pg_cpus = await conn.fetchval(
                "SELECT coalesce(sum(cpus), 0) FROM attempts WHERE released_at IS NULL")
            redis_cpus = int(await redis.get(self.keys.allocated_cpus) or 0)
            r.drift_after_faults = abs(int(pg_cpus) - redis_cpus)
            r.final_allocated_cpus = redis_cpus
            r.final_unreleased_rows = await conn.fetchval(
                "SELECT count(*) FROM attempts WHERE released_at IS NULL")
            await self._check_node_fail(conn)
            r.overlapping_attempts, r.overlapping_jobs = self._overlaps()
            await self._explain_overlaps(conn, r.overlapping_jobs[:10])
        finally:
            await conn.close()
            await redis.aclose()

    async def _check_node_fail(self, conn: asyncpg.Connection[Any]) -> None:
        """How attempts ended NODE_FAIL: fenced by their own executor ('lease lost'), declared
        lost by the reconciler ('worker ... lost'), or otherwise (a drain, a restart)."""
        assert self.system is not None
        r = self.result
        r.node_fail_jobs = r.states.get("NODE_FAIL", 0)
        r.node_fail_reasons = {x["reason"]: x["n"] for x in await conn.fetch(
            "SELECT coalesce(reason, '') AS reason, count(*) AS n FROM attempts "
            "WHERE state = 'NODE_FAIL' GROUP BY 1")}
        r.fenced_attempts = r.node_fail_reasons.get("lease lost", 0)
        r.declared_lost_attempts = sum(n for reason, n in r.node_fail_reasons.items()
                                       if re.fullmatch(r"worker .+ lost", reason))
        fenced = re.compile(r"\bevent=fenced\b|\"event\": ?\"fenced\"")
        for log in self.system.logs.glob("executor*.log"):
            with contextlib.suppress(OSError):
                r.fence_events += sum(1 for line in log.read_text(errors="replace")
                                      .splitlines() if fenced.search(line))

    def _runs(self) -> dict[int, list[tuple[float, float | None, int]]]:
        """Each job's runs from its marks: (start, end or None, attempt), by start."""
        starts: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
        ends: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
        for line in self.marks.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) != 4 or words[0] not in ("start", "end"):
                continue
            with contextlib.suppress(ValueError):
                key, at = (int(words[1]), int(words[2])), float(words[3])
                (starts if words[0] == "start" else ends)[key].append(at)
        runs: dict[int, list[tuple[float, float | None, int]]] = collections.defaultdict(list)
        for (job, attempt), times in starts.items():
            finished = sorted(ends.get((job, attempt), []))
            for i, at in enumerate(sorted(times)):
                # the same attempt run twice: pair its marks in order (a double run is
                # counted as such anyway)
                runs[job].append((at, finished[i] if i < len(finished) else None, attempt))
        for spans in runs.values():
            spans.sort(key=lambda x: x[0])
        return runs

    def _overlaps(self) -> tuple[int, list[int]]:
        """Runs of a job that began while another run of it was alive: those that found the
        job's lock taken, and those whose start/end interval intersects an earlier run's
        (where both have both marks). The count of such runs, and the jobs."""
        bad: set[tuple[int, int, float]] = set()
        for line in self.overlaps.read_text(errors="replace").splitlines():
            words = line.split()
            with contextlib.suppress(ValueError, IndexError):
                job_word, _, attempt_word = words[0].partition(":")
                bad.add((int(job_word), int(attempt_word), round(float(words[1]), 1)))
        runs = self._runs()
        self.result.marked_runs = sum(len(x) for x in runs.values())
        for job, spans in runs.items():
            latest_end = None
            for start, end, attempt in spans:
                # began before an earlier run's end: counted once, whether its lock noticed
                # or not (keyed by its start time)
                if latest_end is not None and start < latest_end and not any(
                        b[0] == job and b[1] == attempt and abs(b[2] - start) < 1 for b in bad):
                    bad.add((job, attempt, round(start, 1)))
                if end is not None:
                    latest_end = end if latest_end is None else max(latest_end, end)
        return len(bad), sorted({b[0] for b in bad})

    async def _explain_overlaps(self, conn: asyncpg.Connection[Any], jobs: list[int]) -> None:
        """For a few overlapping jobs: their runs from the marks, their attempts from
        PostgreSQL (worker, state, reason, times), in the notes."""
        runs = self._runs()
        for job in jobs:
            rows = await conn.fetch(
                "SELECT attempt, worker_id, state, reason, started_at, finished_at, "
                "released_at FROM attempts WHERE job_id = $1 ORDER BY attempt", job)
            marks = "; ".join(
                f"attempt {a} {datetime.fromtimestamp(s_, UTC).strftime('%H:%M:%S.%f')[:-3]}-"
                + (datetime.fromtimestamp(e, UTC).strftime('%H:%M:%S.%f')[:-3] if e else "?")
                for s_, e, a in runs.get(job, []))
            pg = "; ".join(
                f"attempt {x['attempt']} on {x['worker_id']} {x['state']} ({x['reason']}) "
                + " ".join(f"{k} {x[k].strftime('%H:%M:%S.%f')[:-3]}"
                           for k in ("started_at", "finished_at", "released_at") if x[k])
                for x in rows)
            self.result.notes.append(f"overlap in job {job}: runs (UTC) {marks} | PostgreSQL: "
                                     f"{pg}")

    def _job_processes(self) -> list[psutil.Process]:
        """Job scripts still running (their command line names a job directory of ours)."""
        jobs_dir = str(self.work / "sys" / "workers")
        out = []
        for p in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                        jobs_dir in part for part in (p.info["cmdline"] or [])):
                    out.append(p)
        return out
