"""End-to-end benchmark: trivial jobs through the HTTP API to COMPLETED (not a test).

    python bench/e2e.py                      # start a system: 2 executors x 96 virtual CPUs
    python bench/e2e.py --jobs 5000 --workers 4 --cpus 48
    python bench/e2e.py --poll 0.5,0.05,0.01 # one round per arq poll delay, to see its cost
    SCNS_TOKEN=... python bench/e2e.py --url http://host:8080 --database-url postgresql://...

Prints and writes JSON (bench/results/e2e-<time>.json): submits/s, end-to-end jobs/s,
submit->start latency p50/p99 from PostgreSQL's timestamps on an idle system and under load,
and each service's peak RSS. The machine is shared and noisy: compare ratios within one run.
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
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.cli.up import System
from shared.localinfra import free_port
from shared.settings import Settings

# py-spy cannot tell these waits from work here: a thread pool's idle worker, and uvloop's
# loop (idle in epoll, or running C callbacks: counted apart as "loop")
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:", "Thread._wait_for_tstate_lock")
PROFILE_RATE = 100  # py-spy samples/s (it pauses the process for each: keep it modest)
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Sampler:
    """Peak memory per service (sampled every 100 ms) and CPU seconds used while sampling.

    Memory is the process's RSS; for PostgreSQL it is the postmaster's RSS plus each backend's
    unique set size (their shared buffers would otherwise be counted once per backend)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak: dict[str, int] = dict.fromkeys(processes, 0)
        self.cpu: dict[str, float] = dict.fromkeys(processes, 0.0)
        self._cpu0: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu_total(self, name: str) -> float:
        p = self.procs[name]
        total = sum(p.cpu_times()[:2])
        if name == "postgres":
            for c in p.children():
                with contextlib.suppress(psutil.Error):
                    total += sum(c.cpu_times()[:2])
        return total

    def _memory(self, name: str) -> int:
        p = self.procs[name]
        rss = p.memory_info().rss
        if name == "postgres":
            for c in p.children():
                with contextlib.suppress(psutil.Error):
                    rss += c.memory_full_info().uss
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], self._memory(name))
            self._stop.wait(0.1)

    def start_cpu(self) -> None:
        self._cpu0 = {n: self._cpu_total(n) for n in self.procs}

    def stop_cpu(self) -> None:
        for n in self.procs:
            with contextlib.suppress(psutil.Error):
                self.cpu[n] = self._cpu_total(n) - self._cpu0.get(n, 0.0)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


AUTH: dict[str, str] = {}  # the system's admin token, once it is up (SCNS_TOKEN with --url)


async def submit_many(url: str, n: int, concurrency: int, script: str) -> tuple[list[int], float]:
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
                                  headers={"Content-Type": "application/json"}) as r:
                    body = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"submit failed: {r.status} {body}")
                    ids.append(body["id"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ids, time.perf_counter() - started


async def wait_done(db: asyncpg.Pool[Any], ids: list[int], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        left = await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND NOT "
                                 "(state = ANY($2))", ids, list(TERMINAL))
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} jobs not finished after {within_s}s")
        await asyncio.sleep(0.05)


async def latencies(db: asyncpg.Pool[Any], ids: list[int]) -> dict[str, Any]:
    rows = await db.fetch(
        "SELECT state, extract(epoch FROM started_at - submitted_at) * 1000 AS start_ms, "
        "extract(epoch FROM allocated_at - submitted_at) * 1000 AS alloc_ms, "
        "extract(epoch FROM started_at - allocated_at) * 1000 AS launch_ms, "
        "extract(epoch FROM finished_at - started_at) * 1000 AS run_ms, "
        "submitted_at, finished_at FROM jobs WHERE id = ANY($1)", ids)
    lat = [float(r["start_ms"]) for r in rows if r["start_ms"] is not None]

    def p50_p99(col: str) -> dict[str, float]:
        v = [float(r[col]) for r in rows if r[col] is not None]
        return {"p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)}

    first = min(r["submitted_at"] for r in rows)
    last = max(r["finished_at"] for r in rows if r["finished_at"] is not None)
    span = (last - first).total_seconds()
    return {
        "completed": sum(1 for r in rows if r["state"] == "COMPLETED"),
        "submit_to_start_ms": {"p50": round(pct(lat, 50), 1), "p90": round(pct(lat, 90), 1),
                               "p99": round(pct(lat, 99), 1), "max": round(max(lat), 1),
                               "mean": round(statistics.fmean(lat), 1)},
        "submit_to_allocate_ms": p50_p99("alloc_ms"),
        "allocate_to_start_ms": p50_p99("launch_ms"),
        "start_to_finish_ms": p50_p99("run_ms"),
        "first_submit_to_last_finish_s": round(span, 3),
        "end_to_end_jobs_per_s": round(len(rows) / span, 1) if span > 0 else None,
    }


async def resources_timing(url: str, n: int = 300) -> dict[str, float]:
    """Server time of GET /resources (its Server-Timing header): the promise is < 1 ms."""
    times = []
    async with aiohttp.ClientSession(url, headers=AUTH) as s:
        for _ in range(n):
            async with s.get("/api/v1/resources") as r:
                await r.read()
                times.append(float(r.headers["Server-Timing"].split("dur=")[1]))
    return {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3)}


async def idle_round(url: str, db: asyncpg.Pool[Any], n: int) -> dict[str, Any]:
    """One job at a time on a quiet system: the latency a person feels."""
    ids = []
    async with aiohttp.ClientSession(url, headers=AUTH) as s:
        for _ in range(n):
            async with s.post("/api/v1/jobs", json={"script": "true\n"}) as r:
                job_id = (await r.json())["id"]
            ids.append(job_id)
            await wait_done(db, [job_id], 30)
            await asyncio.sleep(0.1)
    return await latencies(db, ids)


async def backlog(db: asyncpg.Pool[Any], peaks: dict[str, int], stop: asyncio.Event) -> None:
    """Where jobs wait: the peak number PENDING (scheduler side) and ALLOCATED (executor
    side) during the round."""
    while not stop.is_set():
        for r in await db.fetch("SELECT state, count(*) AS n FROM jobs WHERE state IN "
                                "('PENDING', 'ALLOCATED', 'RUNNING') GROUP BY state"):
            peaks[r["state"]] = max(peaks.get(r["state"], 0), r["n"])
        await asyncio.sleep(0.25)


async def load_round(url: str, db: asyncpg.Pool[Any], n: int, concurrency: int
                     ) -> dict[str, Any]:
    peaks: dict[str, int] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(backlog(db, peaks, stop))
    ids, submit_s = await submit_many(url, n, concurrency, "true\n")
    await wait_done(db, ids, 60 + n / 20)
    stop.set()
    await watcher
    out = await latencies(db, ids)
    out["peak_backlog"] = peaks
    out["jobs"] = n
    out["submits_per_s"] = round(n / submit_s, 1)
    return out


@contextlib.contextmanager
def system(args: argparse.Namespace, poll: float) -> Iterator[tuple[str, str, dict[str, int]]]:
    if args.url:
        AUTH["Authorization"] = f"Bearer {os.environ.get('SCNS_TOKEN', '')}"
        yield args.url, args.database_url, {}
        return
    data = Path(tempfile.mkdtemp(prefix="scns-bench-"))
    os.chmod(data, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCNS_")}
    env["SCNS_ARQ_POLL_S"] = str(poll)
    env.update(x.split("=", 1) for x in os.environ.get("BENCH_ENV", "").split() if "=" in x)
    settings = Settings.from_env({**env, "SCNS_DATA_DIR": str(data),
                                  "SCNS_GATEWAY_PORT": str(free_port()),
                                  "SCNS_WORKER_ID": "bench", "SCNS_LOG_LEVEL": "WARNING"})
    sysm = System(settings, env, workers=args.workers, cpus=args.cpus, echo=False)
    try:
        url = sysm.start()
        AUTH["Authorization"] = f"Bearer {sysm.admin_token}"
        pids = {c.name: c.proc.pid for c in sysm.children}
        for s in sysm.servers:
            pids["redis" if "redis" in s.name or "valkey" in s.name else "postgres"] = \
                s.process.pid
        yield url, sysm.db_url, pids
    finally:
        sysm.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "arch": os.uname().machine},
        "config": {"workers": args.workers, "cpus_per_worker": args.cpus, "jobs": args.jobs,
                   "concurrency": args.concurrency},
        "rounds": [],
    }
    if args.reference:
        # the same machine, the same minute: a naive arq worker running /bin/true per job
        out = await asyncio.to_thread(subprocess.run, [
            sys.executable, str(Path(__file__).with_name("naive_arq.py")),
            "--jobs", str(args.jobs)], capture_output=True, text=True, check=True)
        results["reference_naive_arq"] = orjson.loads(out.stdout.strip().splitlines()[-1])
        print(f"reference: naive arq worker, /bin/true per job, "
              f"{results['reference_naive_arq']['jobs_per_s']} jobs/s")
    for poll in args.poll:
        with system(args, poll) as (url, db_url, pids):
            db = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
            try:
                sampler = Sampler(pids) if pids else None
                with sampler or contextlib.nullcontext():
                    idle = await idle_round(url, db, args.idle)
                    idle["resources_server_time"] = await resources_timing(url)
                    if sampler:
                        sampler.start_cpu()
                    me0 = sum(os.times()[:2])
                    busy0 = machine_busy_s()
                    with profiling(args.profile, pids) as profiles:
                        load = await load_round(url, db, args.jobs, args.concurrency)
                    me = sum(os.times()[:2]) - me0
                    busy = machine_busy_s() - busy0
                    if sampler:
                        sampler.stop_cpu()
                        sampler.cpu["bench-client"] = me
                        # everything: the services, the jobs' own processes (their wrappers,
                        # shells), the kernel's work for them, and whatever else runs here
                        sampler.cpu["machine"] = busy
                rss = {k: round(v / 2**20, 1) for k, v in (sampler.peak if sampler else {}).items()}
                cpu = {k: round(v, 2) for k, v in (sampler.cpu if sampler else {}).items()}
            finally:
                await db.close()
        round_ = {"arq_poll_s": poll, "idle": idle, "load": load, "peak_rss_mb": rss,
                  "load_cpu_seconds": cpu}
        if profiles:
            round_["profile"] = {name: summarise(path, args.jobs) for name, path in
                                 profiles.items()}
        if args.reference:
            round_["ratio_to_naive_arq"] = round(
                load["end_to_end_jobs_per_s"] / results["reference_naive_arq"]["jobs_per_s"], 3)
        results["rounds"].append(round_)
        print_round(round_)
    return results


@contextlib.contextmanager
def profiling(where: Path | None, pids: dict[str, int]) -> Iterator[dict[str, Path]]:
    """py-spy on every Python service during the load round: collapsed stacks per service in
    `where` (flame graphs: `flamegraph.pl` or speedscope read them), summarised by
    summarise()."""
    if where is None or not pids:
        yield {}
        return
    where.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        if name in ("postgres", "redis"):
            continue
        out = where / f"{name}.txt"
        spies[name] = (subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
             "--rate", str(PROFILE_RATE), "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield {name: out for name, (_, out) in spies.items()}
    finally:
        for proc, _ in spies.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in spies.values():
            proc.wait(timeout=30)


def summarise(path: Path, jobs: int, top: int = 14) -> dict[str, Any]:
    """CPU per job from py-spy's collapsed stacks: by the package the sampled frame is in
    (self time: redis-py, asyncpg, asyncio, ours...) and by our own functions (inclusive: the
    function and what it calls)."""
    inclusive: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = idle = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += n
            continue
        where = frames[-1].rpartition(" (")[2].rstrip(")")
        package = where.split("/")[0].split(":")[0].removesuffix(".py")
        if frames[-1].startswith("Runner.run (asyncio/runners.py"):
            package = "loop (idle or uvloop's C)"
        by_package[package] = by_package.get(package, 0) + n
        seen = set()
        for frame in frames:
            fn, _, where = frame.rpartition(" (")
            if where.startswith(("services/", "shared/")):
                name = f"{where.split(':')[0]}:{fn}"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] = inclusive.get(name, 0) + n
    ms = 1000 / PROFILE_RATE / jobs

    def best(d: dict[str, int]) -> dict[str, float]:
        return {k: round(v * ms, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]}

    return {"ms_per_job": round((total - idle) * ms, 3), "self_by_package": best(by_package),
            "ours_inclusive": best(inclusive)}


def print_round(r: dict[str, Any]) -> None:
    idle, load = r["idle"], r["load"]
    print(f"\n== arq poll delay {r['arq_poll_s']} s")
    print(f"  idle  submit->start  p50 {idle['submit_to_start_ms']['p50']} ms   "
          f"p99 {idle['submit_to_start_ms']['p99']} ms;  GET /resources server time "
          f"p50 {idle['resources_server_time']['p50_ms']} ms p99 "
          f"{idle['resources_server_time']['p99_ms']} ms")
    print(f"  load  {load['jobs']} jobs: {load['submits_per_s']} submits/s, "
          f"{load['end_to_end_jobs_per_s']} jobs/s end to end, "
          f"completed {load['completed']}"
          + (f"  ({r['ratio_to_naive_arq']} x the naive arq worker)"
             if "ratio_to_naive_arq" in r else ""))
    print(f"        submit->start  p50 {load['submit_to_start_ms']['p50']} ms   "
          f"p99 {load['submit_to_start_ms']['p99']} ms")
    print(f"        submit->allocate {load['submit_to_allocate_ms']}  allocate->start "
          f"{load['allocate_to_start_ms']}  start->finish {load['start_to_finish_ms']}")
    print(f"        peak backlog  {load['peak_backlog']}")
    if r["load_cpu_seconds"]:
        cpu = dict(r["load_cpu_seconds"])
        machine = cpu.pop("machine", None)
        print("  CPU s (load) " + "  ".join(f"{k} {v}" for k, v in sorted(cpu.items())))
        services = sum(cpu.values())
        print(f"  CPU ms/job   services and bench client {1000 * services / load['jobs']:.2f}"
              + (f", whole machine {1000 * machine / load['jobs']:.2f} (the jobs' own "
                 "processes and the kernel's work for them included)" if machine else ""))
    for name, prof in sorted(r.get("profile", {}).items()):
        print(f"  profile {name}: {prof.get('ms_per_job')} ms CPU/job sampled; by package: "
              + ", ".join(f"{k} {v}" for k, v in prof.get("self_by_package", {}).items()))
        for fn, v in prof.get("ours_inclusive", {}).items():
            print(f"      {v:7.3f}  {fn}")
    if r["peak_rss_mb"]:
        print("  peak RSS MB  " + "  ".join(f"{k} {v}" for k, v in sorted(r["peak_rss_mb"]
                                                                         .items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP submitters")
    ap.add_argument("--idle", type=int, default=30, help="jobs in the idle round")
    ap.add_argument("--poll", type=lambda s: [float(x) for x in s.split(",")], default=[0.02],
                    help="arq poll delay(s), comma-separated: one round each")
    ap.add_argument("--url", help="use a running gateway instead of starting a system")
    ap.add_argument("--database-url", help="its PostgreSQL (with --url)")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the naive-arq reference run (bench/naive_arq.py)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy every service during the load round (collapsed stacks in DIR)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.url and not args.database_url:
        ap.error("--url needs --database-url (latencies come from PostgreSQL's timestamps)")
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
