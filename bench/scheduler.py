"""Scheduler benchmark (not a test): the real pass, in-process, on a real Redis and PostgreSQL,
with simulated workers and no executors.

    python bench/scheduler.py                        # 100,000 pending, 1,000 workers x 20 CPUs
    python bench/scheduler.py --pending 10000 --workers 100
    SCNS_REDIS_URL=... SCNS_DATABASE_URL=postgresql://.../postgres python bench/scheduler.py

(a) cost of a pass against the queue's length: the same free capacity (--small-workers x 8
    CPUs) over queues of 1,000 and --pending jobs (4 users, a partition each); the ms of a pass
    that fills it and the rows it read. A pass whose cost grows with what it places, not with
    the queue, shows a ratio near 1.
(b) placement throughput: --pending jobs over --workers workers of --cpus CPUs, passes run
    back to back until every CPU is taken: jobs placed per second (PostgreSQL, Redis and the
    arq launch included).

Each scenario gets a database of its own (created and dropped here) and a key prefix of its own.
Prints and writes JSON (bench/results/scheduler-<time>.json, or --json-out).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/scheduler.py` puts bench/ first on sys.path, where array.py would stand in for
# the standard library's `array`: the repo's root takes its place
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from services.scheduler.service import Scheduler
from shared.arrays import parse_array
from shared.db.jobs import JobSpec
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.dispatch import Dispatch
from shared.membership import Lease, Membership
from shared.redis import connect
from shared.settings import Settings
from shared.wiring import Wiring

USERS = 4


@asynccontextmanager
async def scenario(base: Settings) -> AsyncIterator[Wiring]:
    name = f"scns_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(base.database_url)._replace(path="/" + name))
    settings = replace(base, database_url=url, key_prefix=f"{{sb{uuid.uuid4().hex[:8]}}}:",
                       max_array_size=1_000_001)
    redis = connect(settings.redis_url)
    pool = None
    try:
        await migrate(url)
        pool = await create_pool(url, max_size=8)
        w = Wiring.build(settings, redis, pool)
        await w.allocator.restore([], epoch="bench")
        yield w
    finally:
        if pool is not None:
            await pool.close()
        keys = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await redis.delete(*keys[i:i + 1000])
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def add_workers(w: Wiring, n: int, cpus: int) -> None:
    m = Membership(w.redis, w.keys)
    now = int(time.time() * 1000)
    for i in range(n):
        wid = f"w{i:04d}"
        await m.heartbeat(worker_id=wid, incarnation="i", hostname="bench", cpus=cpus,
                          memory_mb=cpus * 4096, labels={"pool": f"p{i % USERS}"},
                          ttl_ms=3_600_000, now_ms=now)
        await m.join(Lease(worker_id=wid, incarnation="i", hostname="bench", cpus=cpus,
                           memory_mb=cpus * 4096, labels={"pool": f"p{i % USERS}"}),
                     now_ms=now)


async def fill_queue(w: Wiring, pending: int) -> float:
    """`pending` 1-CPU jobs, as one array per user; returns the seconds it took."""
    started = time.perf_counter()
    per_user = pending // USERS
    for u in range(USERS):
        spec = JobSpec(script="true\n", user=f"user{u}",
                       array=parse_array(f"0-{per_user - 1}", max_size=1_000_001))
        await w.lifecycle.submit(spec)
    # what autovacuum does within a minute of a change this size: without statistics the
    # planner takes the new table for a small one (hash joins over every pending job)
    await w.pool.execute("ANALYZE jobs")
    return time.perf_counter() - started


async def pass_cost(base: Settings, pending: int, workers: int) -> dict[str, Any]:
    async with scenario(base) as w:
        await add_workers(w, workers, 8)
        fill_s = await fill_queue(w, pending)
        sched = Scheduler(w)
        await sched.run_pass()  # warm: statements prepared, fair share read
        # free the CPUs again: hand the placements back, then time a pass that refills them
        rows = await w.pool.fetch("SELECT id, attempt, worker_id FROM jobs "
                                  "WHERE state = 'ALLOCATED'")
        await w.lifecycle.hand_back([Dispatch(worker_id=r["worker_id"], job_id=r["id"],
                                              attempt=r["attempt"]) for r in rows])
        started = time.perf_counter()
        r = await sched.run_pass()
        ms = (time.perf_counter() - started) * 1000
    return {"pending": pending, "free_cpus": workers * 8, "placed": r.placed,
            "rows_read": r.considered, "pass_ms": round(ms, 2), "fill_s": round(fill_s, 2)}


async def throughput(base: Settings, pending: int, workers: int, cpus: int) -> dict[str, Any]:
    async with scenario(base) as w:
        await add_workers(w, workers, cpus)
        await fill_queue(w, pending)
        sched = Scheduler(w)
        placed, passes = 0, 0
        started = time.perf_counter()
        while placed < workers * cpus:
            r = await sched.run_pass()
            passes += 1
            if not r.placed:
                break
            placed += r.placed
        elapsed = time.perf_counter() - started
    return {"pending": pending, "workers": workers, "cpus_per_worker": cpus, "placed": placed,
            "passes": passes, "seconds": round(elapsed, 2),
            "jobs_per_s": round(placed / elapsed, 1)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith("SCNS_")}
    env.setdefault("SCNS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    base = Settings.from_env(env)
    small = await pass_cost(base, 1_000, args.small_workers)
    large = await pass_cost(base, args.pending, args.small_workers)
    ratio = large["pass_ms"] / small["pass_ms"] if small["pass_ms"] else None
    print(f"(a) a pass filling {small['free_cpus']} CPUs: {small['pass_ms']} ms over 1,000 "
          f"pending ({small['rows_read']} rows read), {large['pass_ms']} ms over "
          f"{args.pending:,} pending ({large['rows_read']} rows read): ratio "
          f"{ratio:.2f}" if ratio else "(a) no figure")
    tp = await throughput(base, args.pending, args.workers, args.cpus)
    print(f"(b) {tp['placed']:,} jobs placed on {args.workers:,} workers x {args.cpus} CPUs "
          f"from {args.pending:,} pending in {tp['seconds']} s over {tp['passes']} passes: "
          f"{tp['jobs_per_s']:,} jobs/s")
    return {"pass_cost": {"small": small, "large": large, "ratio": ratio}, "throughput": tp}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pending", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=1_000)
    p.add_argument("--cpus", type=int, default=20)
    p.add_argument("--small-workers", type=int, default=8)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    result = asyncio.run(main(a))
    out = a.json_out or (Path(__file__).parent / "results" /
                         f"scheduler-{datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"written to {out}")
