"""Reference point for bench/e2e.py: a naive arq worker running `/bin/true` per job.

No database, no allocation, no events, no supervision: arq with the same poll delay and
concurrency as our executors, the job started with asyncio's subprocess API. The issue that
asked for bench/e2e.py quoted ~230 jobs/s for this on the development machine; running it in
the same session as e2e.py turns "our jobs/s" into a ratio that survives a slower or busier
machine. Not a test.

    python bench/naive_arq.py --jobs 2000            # starts a private Redis
    python bench/naive_arq.py --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where array.py would stand in for the
# standard library's `array` (socket imports it): the repo's root takes its place.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.localinfra import start_redis

QUEUE = "naive"


async def run_true(ctx: dict[str, Any]) -> int:
    proc = await asyncio.create_subprocess_exec("/bin/true")
    return await proc.wait()


async def measure(redis_url: str, jobs: int, *, max_jobs: int, poll_delay: float
                  ) -> dict[str, Any]:
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings, default_queue_name=QUEUE)
    await pool.delete(QUEUE)
    for _ in range(jobs):
        await pool.enqueue_job("run_true", _queue_name=QUEUE)
    worker = Worker(functions=[run_true], redis_settings=settings, queue_name=QUEUE,
                    burst=True, max_jobs=max_jobs, poll_delay=poll_delay, keep_result=0,
                    handle_signals=False)
    started = time.perf_counter()
    await worker.async_run()
    seconds = time.perf_counter() - started
    done = worker.jobs_complete
    await worker.close()
    await pool.aclose()
    return {"jobs": jobs, "completed": done, "seconds": round(seconds, 3),
            "jobs_per_s": round(done / seconds, 1), "max_jobs": max_jobs,
            "poll_delay_s": poll_delay}


def run(redis_url: str | None, jobs: int, *, max_jobs: int = 64,
        poll_delay: float = 0.02) -> dict[str, Any]:
    if redis_url:
        return asyncio.run(measure(redis_url, jobs, max_jobs=max_jobs, poll_delay=poll_delay))
    data = Path(tempfile.mkdtemp(prefix="scns-naive-"))
    server = start_redis(data)
    try:
        return asyncio.run(measure(server.url, jobs, max_jobs=max_jobs, poll_delay=poll_delay))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--max-jobs", type=int, default=64)
    ap.add_argument("--poll", type=float, default=0.02)
    ap.add_argument("--redis-url")
    args = ap.parse_args()
    r = run(args.redis_url, args.jobs, max_jobs=args.max_jobs, poll_delay=args.poll)
    print(orjson.dumps(r).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
