"""The rounds of bench/e2e.py: what each submits through the HTTP API, and what it reads back.

Latencies come from PostgreSQL's own timestamps (submitted_at, allocated_at, started_at,
finished_at), never from the client's clock. While a round runs, the bench watches its jobs
with one small, indexed count every POLL_S (by an id range or by array_job_id, restricted to
the non-terminal states): the CPU that costs PostgreSQL is measured as the system's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp
import asyncpg
import orjson

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
ACTIVE = ["PENDING", "ALLOCATED", "RUNNING"]  # every other state
TRUE = "true\n"  # the trivial job
POLL_S = 0.2  # how often a round counts what is left (and the backlog)
JSON_BODY = {"Content-Type": "application/json"}
ARRAY_TARGET_PER_S = 1000.0  # the target: array elements/s end to end
RATE_TARGET = (300.0, 1000.0)  # ... and submit->start p99 <= 1 s (ms) at 300 jobs/s offered

AUTH: dict[str, str] = {}  # the system's admin token, once it is up (SCNS_TOKEN with --url)

if TYPE_CHECKING:  # asyncpg's stubs only: at run time Pool is no generic
    Pool = asyncpg.Pool[Any]


class Scope(NamedTuple):
    """The jobs a round watches: a WHERE clause on `jobs` and its arguments, each an index
    probe (primary key range, jobs_array_state), not an `id = ANY` of thousands of ids."""

    where: str
    args: tuple[Any, ...]

    @staticmethod
    def since(first_id: int) -> Scope:
        return Scope("id >= $1", (first_id,))

    @staticmethod
    def ids(lo: int, hi: int) -> Scope:
        return Scope("id BETWEEN $1 AND $2", (lo, hi))

    @staticmethod
    def array(array_id: int) -> Scope:
        return Scope("array_job_id = $1", (array_id,))

    @staticmethod
    def listed(ids: list[int]) -> Scope:
        """Exactly these jobs: for the one read of their timestamps at a round's end."""
        return Scope("id = ANY($1)", (ids,))


def bench_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the pairs of $BENCH_ENV (KEY=value ..., the system's env) put over it."""
    out = dict(env)
    for pair in os.environ.get("BENCH_ENV", "").split():
        key, eq, value = pair.partition("=")
        if eq:
            out[key] = value
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def spread(values: list[float], *ps: float) -> dict[str, float]:
    out = {f"p{p:g}": round(pct(values, p), 1) for p in ps}
    if values:
        out["max"] = round(max(values), 1)
    return out


async def next_id(db: Pool) -> int:
    """The id the next job will get, or a higher one (ids come from an identity column)."""
    return int(await db.fetchval("SELECT coalesce(max(id), 0) + 1 FROM jobs"))


async def active(db: Pool, scope: Scope) -> dict[str, int]:
    """How many of the scope's jobs are PENDING, ALLOCATED and RUNNING."""
    rows = await db.fetch(f"SELECT state, count(*) AS n FROM jobs WHERE {scope.where} "
                          f"AND state = ANY(${len(scope.args) + 1}::text[]) GROUP BY state",
                          *scope.args, ACTIVE)
    return {r["state"]: int(r["n"]) for r in rows}


def track(peaks: dict[str, int], counts: dict[str, int]) -> None:
    for state, n in counts.items():
        peaks[state] = max(peaks.get(state, 0), n)


async def wait_done(db: Pool, scope: Scope, within_s: float, poll_s: float = POLL_S,
                    peaks: dict[str, int] | None = None) -> None:
    """Until none of the scope's jobs is left PENDING, ALLOCATED or RUNNING (recording the
    peak number in each state in `peaks`)."""
    deadline = time.monotonic() + within_s
    while True:
        counts = await active(db, scope)
        if peaks is not None:
            track(peaks, counts)
        left = sum(counts.values())
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} jobs not finished after {within_s:g}s: {counts}")
        await asyncio.sleep(poll_s)


@contextlib.asynccontextmanager
async def backlog(db: Pool, scope: Scope, peaks: dict[str, int]) -> AsyncIterator[None]:
    """While the block submits: where jobs wait, the peak number PENDING (scheduler side),
    ALLOCATED (executor side) and RUNNING."""
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            track(peaks, await active(db, scope))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        stop.set()
        await task


async def latencies(db: Pool, scope: Scope, since: datetime | None = None) -> dict[str, Any]:
    """Each phase's latency from PostgreSQL's timestamps, and jobs/s from the first submit (or
    `since`) to the last finish."""
    rows = await db.fetch(
        "SELECT state, extract(epoch FROM started_at - submitted_at) * 1000 AS start_ms, "
        "extract(epoch FROM allocated_at - submitted_at) * 1000 AS alloc_ms, "
        "extract(epoch FROM started_at - allocated_at) * 1000 AS launch_ms, "
        "extract(epoch FROM finished_at - started_at) * 1000 AS run_ms, "
        f"submitted_at, finished_at FROM jobs WHERE {scope.where}", *scope.args)
    lat = [float(r["start_ms"]) for r in rows if r["start_ms"] is not None]

    def p50_p99(col: str) -> dict[str, float]:
        v = [float(r[col]) for r in rows if r[col] is not None]
        return {"p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)}

    first = since or min(r["submitted_at"] for r in rows)
    last = max((r["finished_at"] for r in rows if r["finished_at"] is not None), default=first)
    span = (last - first).total_seconds()
    others: dict[str, int] = {}
    for r in rows:
        if r["state"] != "COMPLETED":
            others[r["state"]] = others.get(r["state"], 0) + 1
    return {
        "completed": len(rows) - sum(others.values()),
        **({"not_completed": others} if others else {}),
        "submit_to_start_ms": {**spread(lat, 50, 90, 99),
                               "mean": round(statistics.fmean(lat), 1) if lat else None},
        "submit_to_allocate_ms": p50_p99("alloc_ms"),
        "allocate_to_start_ms": p50_p99("launch_ms"),
        "start_to_finish_ms": p50_p99("run_ms"),
        "first_submit_to_last_finish_s": round(span, 3),
        "end_to_end_jobs_per_s": round(len(rows) / span, 1) if span > 0 else None,
    }


async def submit_many(url: str, n: int, concurrency: int, script: str) -> tuple[list[int], float]:
    """n submits from `concurrency` submitters, each sending its next when answered."""
    ids: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency),
                                     headers=AUTH) as s:
        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                async with s.post("/api/v1/jobs", data=orjson.dumps({"script": script}),
                                  headers=JSON_BODY) as r:
                    body = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"submit failed: {r.status} {body}")
                    ids.append(body["id"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ids, time.perf_counter() - started


async def resources_timing(url: str, n: int = 300) -> dict[str, float]:
    """Server time of GET /resources (its Server-Timing header): the promise is < 1 ms."""
    times = []
    async with aiohttp.ClientSession(url, headers=AUTH) as s:
        for _ in range(n):
            async with s.get("/api/v1/resources") as r:
                await r.read()
                times.append(float(r.headers["Server-Timing"].split("dur=")[1]))
    return {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3)}


async def idle_round(url: str, db: Pool, n: int) -> dict[str, Any]:
    """One job at a time on a quiet system: the latency a person feels."""
    ids = []
    async with aiohttp.ClientSession(url, headers=AUTH) as s:
        for _ in range(n):
            async with s.post("/api/v1/jobs", json={"script": TRUE}) as r:
                job_id = (await r.json())["id"]
            ids.append(job_id)
            await wait_done(db, Scope("id = $1", (job_id,)), 30, poll_s=0.05)
            await asyncio.sleep(0.1)
    return await latencies(db, Scope.listed(ids))


async def load_round(url: str, db: Pool, n: int, concurrency: int) -> dict[str, Any]:
    """Closed loop: n jobs from `concurrency` submitters as fast as the gateway answers."""
    peaks: dict[str, int] = {}
    async with backlog(db, Scope.since(await next_id(db)), peaks):
        ids, submit_s = await submit_many(url, n, concurrency, TRUE)
    await wait_done(db, Scope.ids(min(ids), max(ids)), 60 + n / 20, peaks=peaks)
    out = await latencies(db, Scope.listed(ids))
    out["peak_backlog"] = peaks
    out["jobs"] = n
    out["submits_per_s"] = round(n / submit_s, 1)
    return out


async def array_round(url: str, db: Pool, n: int) -> dict[str, Any]:
    """One POST of an n-element array of `true`, to its last element's end."""
    body = {"script": TRUE, "name": "bench-array", "array": f"0-{n - 1}"}
    async with aiohttp.ClientSession(url, headers=AUTH) as s:
        t0 = time.perf_counter()
        async with s.post("/api/v1/jobs", data=orjson.dumps(body), headers=JSON_BODY) as r:
            answer = orjson.loads(await r.read())
            if r.status != 201:
                raise RuntimeError(f"array submit failed: {r.status} {answer}")
        accept_s = time.perf_counter() - t0
    array_id = int(answer["id"])
    peaks: dict[str, int] = {}
    await wait_done(db, Scope.array(array_id), 60 + n / 20, peaks=peaks)
    submitted = await db.fetchval("SELECT submitted_at FROM job_arrays WHERE id = $1", array_id)
    out = await latencies(db, Scope.array(array_id), since=submitted)
    out["elements_per_s"] = out.pop("end_to_end_jobs_per_s")
    out["target_elements_per_s"] = ARRAY_TARGET_PER_S
    out["array_job_id"] = array_id
    out["elements"] = n
    out["accept_s"] = round(accept_s, 3)
    out["peak_backlog"] = peaks
    return out


async def rate_round(url: str, db: Pool, n: int, rate: float, in_flight: int
                     ) -> dict[str, Any]:
    """Open loop: n single jobs offered at `rate`/s, submit i sent at t0 + i/rate whether or
    not the earlier ones were answered (at most `in_flight` unanswered: past that, the client
    falls behind the schedule, which the figures show)."""
    loop = asyncio.get_running_loop()
    ids: list[int] = []
    errors: dict[str, int] = {}
    lag_ms: list[float] = []  # how late each submit left, against its time on the schedule
    answer_ms: list[float] = []  # from sending a submit to its answer
    slots = asyncio.Semaphore(in_flight)
    flying = busiest = 0
    peaks: dict[str, int] = {}
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=in_flight),
                                     headers=AUTH) as s:
        async def submit() -> None:
            nonlocal flying
            sent = loop.time()
            try:
                async with s.post("/api/v1/jobs", data=orjson.dumps({"script": TRUE}),
                                  headers=JSON_BODY) as r:
                    raw = await r.read()
                    if r.status == 201:
                        ids.append(orjson.loads(raw)["id"])
                    else:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
            except aiohttp.ClientError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            finally:
                answer_ms.append((loop.time() - sent) * 1000)
                flying -= 1
                slots.release()

        tasks = []
        async with backlog(db, Scope.since(await next_id(db)), peaks):
            t0 = loop.time() + 0.05
            for i in range(n):
                due = t0 + i / rate
                await asyncio.sleep(max(0.0, due - loop.time()))  # 0: yield, let them send
                await slots.acquire()
                flying += 1
                busiest = max(busiest, flying)
                lag_ms.append((loop.time() - due) * 1000)
                tasks.append(asyncio.create_task(submit()))
            sent_s = loop.time() - t0
            await asyncio.gather(*tasks)
            answered_s = loop.time() - t0
    if not ids:
        raise RuntimeError(f"no submit accepted: {errors}")
    await wait_done(db, Scope.ids(min(ids), max(ids)), 60 + n / 20, peaks=peaks)
    out = await latencies(db, Scope.listed(ids))
    sent_per_s = n / (sent_s + 1 / rate)  # on schedule: exactly `rate`
    out.update({
        "jobs": n, "offered_per_s": rate, "sent_per_s": round(sent_per_s, 1),
        "accepted_per_s": round(len(ids) / answered_s, 1),
        "fell_behind": sent_per_s < 0.97 * rate, "send_lag_ms": spread(lag_ms, 50, 99),
        "submit_answer_ms": spread(answer_ms, 50, 99), "in_flight_limit": in_flight,
        "peak_in_flight": busiest, "submit_errors": errors, "peak_backlog": peaks,
        "target": {"offered_per_s": RATE_TARGET[0], "submit_to_start_p99_ms": RATE_TARGET[1]},
    })
    return out
