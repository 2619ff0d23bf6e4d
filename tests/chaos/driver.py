"""The chaos driver: jobs run while processes are SIGKILLed, Redis is wiped and PostgreSQL stops.

Used by tests/chaos (a CI-sized run) and bench/chaos.py (long runs). It starts its own Redis and
PostgreSQL (so that it may wipe and stop them), a whole system on them with fast timings, and:

* a submitter that sends N jobs through the HTTP API at a steady pace, retrying when the gateway
  is down or answers 503; every 201 is an *accepted* job. Each job script appends
  `job:attempt` to a marker file (O_APPEND: one line per run), then sleeps a little;
* a fault injector that, until the submissions are done and at least `faults` were injected,
  picks a fault kind (cycling through all kinds, then at random): SIGKILL and restart an
  executor, the scheduler, the registry, the reconciler or the gateway; restart Redis with its
  data wiped; stop PostgreSQL for a few seconds.

Then it waits for every accepted job to end and checks the promises: none lost, no attempt run
twice, allocations in Redis equal PostgreSQL's unreleased allocations (and are 0 at the end), no
job process left running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
from redis.asyncio import Redis

from services.cli.up import System
from shared.db.migrate import migrate
from shared.keys import Keys
from shared.localinfra import Server, free_port, start_postgres, start_redis
from shared.settings import Settings

KINDS = ("kill-executor", "kill-scheduler", "kill-registry", "kill-reconciler", "kill-gateway",
         "wipe-redis", "stop-postgres")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


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
    settle_timeout_s: float = 240.0
    seed: int = 1


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
                and self.unexplained_runs == 0
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
            f"  drift after the last fault {self.drift_after_faults}; final allocated CPUs "
            f"{self.final_allocated_cpus}, unreleased rows {self.final_unreleased_rows}; "
            f"job processes left {self.leftover_processes}",
            f"  services that died on their own (crash loop): {self.services_died or 'none'}",
            f"  verdict: {'PASS' if self.ok else 'FAIL'}",
            *[f"  note: {n}" for n in self.notes],
        ])


class Chaos:
    def __init__(self, cfg: ChaosConfig, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.work = workdir or Path(tempfile.mkdtemp(prefix="scns-chaos-"))
        os.chmod(self.work, 0o755)  # PostgreSQL runs as another user when we are root
        self.marker = self.work / "marker"
        self.redis_port = free_port()
        self.redis_server: Server | None = None
        self.pg_server: Server | None = None
        self.pg_port = 0
        self.system: System | None = None
        self.keys = Keys("{chaos}:")
        self.result = ChaosResult()
        self.accepted: list[int] = []
        self._submitting = True

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

    def start(self) -> str:
        self._start_redis(wipe=True)
        self._start_postgres()
        asyncio.run(migrate(self.db_url))
        assert self.redis_server is not None
        settings = Settings(
            redis_url=self.redis_server.url, database_url=self.db_url,
            key_prefix=self.keys.prefix, worker_id="chaos", gateway_port=free_port(),
            data_dir=self.work / "sys", heartbeat_s=1.0, worker_ttl_s=4.0,
            registry_sweep_s=0.5, reconcile_s=2.0, node_fail_grace_s=3.0, repair_grace_s=2.0,
            kill_grace_s=2.0, drain_grace_s=2.0, claim_idle_ms=2000, scheduler_interval_s=1.0,
            log_format="text", log_level="INFO")
        env = {**os.environ, "SCNS_REDIS_URL": settings.redis_url,
               "SCNS_DATABASE_URL": settings.database_url}
        self.system = System(settings, env, workers=self.cfg.workers, cpus=self.cfg.cpus,
                             echo=False)
        return self.system.start()

    def stop(self) -> None:
        if self.system is not None:
            self.system.stop()
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

    # --- load ----------------------------------------------------------------------------
    async def submit_all(self, url: str) -> None:
        gap = self.cfg.submit_seconds / max(self.cfg.jobs, 1)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(url, timeout=timeout) as s:
            for i in range(self.cfg.jobs):
                body = {"script": f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {self.marker}\n'
                                  f"sleep {self.rng.choice(['0', '0.1', '0.3', '0.5', '1'])}\n",
                        "cpus": self.rng.choice([1, 1, 1, 2, 4]),
                        "requeue": self.rng.random() < self.cfg.requeue_fraction,
                        "name": f"chaos-{i}"}
                await self._submit_one(s, body, key=f"chaos-{self.cfg.seed}-{i}")
                await asyncio.sleep(gap)
        self._submitting = False

    async def _submit_one(self, s: aiohttp.ClientSession, body: dict[str, Any], *,
                          key: str) -> None:
        """Submit until answered. A try whose answer was lost (sent, then the gateway died)
        is retried with the same Idempotency-Key: it must return the job the lost try made,
        if it made one, and never make a second (checked by `uncertain_created`)."""
        delay = 0.2
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        while True:
            try:
                async with s.post("/api/v1/jobs", data=orjson.dumps(body), headers=headers) as r:
                    if r.status in (200, 201):
                        self.accepted.append((await r.json())["id"])
                        return
                    if r.status != 503:
                        raise RuntimeError(f"submit refused: {r.status} {await r.text()}")
            except aiohttp.ClientConnectorError:
                pass  # the gateway is down: nothing was sent, retry
            except (aiohttp.ClientError, TimeoutError):
                self.result.uncertain += 1  # sent, answer lost: retry with the same key
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- the run -------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        started = time.monotonic()
        url = await asyncio.to_thread(self.start)
        try:
            await asyncio.gather(self.submit_all(url), self.faults())
            last_fault = time.monotonic()
            await self._settle()
            await self._check(last_fault)
            assert self.system is not None
            # every service survived every fault it was not the target of
            self.result.services_died = [c.name for c in self.system.children
                                         if c.proc.poll() is not None]
        finally:
            await asyncio.to_thread(self.stop)
            self.result.leftover_processes = len(self._job_processes())
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
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND NOT (state = ANY($2))",
                    self.accepted, list(TERMINAL))
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    self.result.notes.append(f"{left} accepted jobs still not finished")
                    return
                await asyncio.sleep(1)
        finally:
            await conn.close()

    async def _check(self, last_fault: float) -> None:
        assert self.redis_server is not None and self.system is not None
        r = self.result
        conn = await self._db()
        redis = Redis.from_url(self.redis_server.url, decode_responses=True)
        try:
            rows = await conn.fetch("SELECT id, state, attempt FROM jobs WHERE id = ANY($1)",
                                    self.accepted)
            r.accepted = len(self.accepted)
            r.rows = len(rows)
            r.lost = len(set(self.accepted) - {x["id"] for x in rows})
            r.states = dict(collections.Counter(x["state"] for x in rows))
            r.uncertain_created = await conn.fetchval("SELECT count(*) FROM jobs") - r.rows
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
        finally:
            await conn.close()
            await redis.aclose()

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
