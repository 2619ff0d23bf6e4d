"""End-to-end benchmark: trivial jobs through the HTTP API to COMPLETED (not a test).

    python bench/e2e.py                      # start a system: 2 executors x 96 virtual CPUs
    python bench/e2e.py --jobs 5000 --workers 4 --cpus 48
    python bench/e2e.py --poll 0.5,0.05,0.01 # one round per arq poll delay, to see its cost
    python bench/e2e.py --array 20000        # + one 20,000-element array of `true`
    python bench/e2e.py --no-load --rate 300 # open loop instead: --jobs at 300 submits/s
    python bench/e2e.py --no-reference --jobs 500 --array 1000 --rate 200   # a quick look
    SCNS_TOKEN=... python bench/e2e.py --url http://host:8080 --database-url postgresql://...
                                             # (that gateway needs SCNS_RATE_LIMIT_RPS=0)

Rounds, each on the same system: idle (one job at a time), load (closed loop: --jobs from
--concurrency submitters; --no-load skips it), array (--array N: one POST of N elements, to the
last one's end; the target is >= 1,000 elements/s), rate (--rate R: open loop, --jobs offered at
R/s whatever the answers; the target is submit->start p99 <= 1 s at 300/s).

Prints and writes JSON (bench/results/e2e-<time>.json): submits/s, end-to-end jobs/s,
submit->start latency percentiles from PostgreSQL's timestamps, CPU per job per process and for
the whole machine, the ratio to a naive arq worker, and each service's peak RSS. The machine is
shared and noisy: compare ratios within one run.
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e_rounds import (
    AUTH,
    array_round,
    bench_env,
    idle_round,
    load_round,
    rate_round,
    resources_timing,
)
from services.cli.up import System
from shared.arrays import DEFAULT_MAX_ARRAY_SIZE
from shared.localinfra import free_port
from shared.settings import Settings

# py-spy cannot tell these waits from work here: a thread pool's idle worker, and uvloop's
# loop (idle in epoll, or running C callbacks: counted apart as "loop")
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:", "Thread._wait_for_tstate_lock")
# a pause before a round: the last one's tail (executors' cleanup, autovacuum) is not its
SETTLE_S = 1.0
PROFILE_RATE = 100  # py-spy samples/s (it pauses the process for each: keep it modest)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Sampler:
    """Peak memory per service (sampled every 100 ms) and each service's CPU seconds so far.

    Memory is the process's RSS; for PostgreSQL it is the postmaster's RSS plus each backend's
    unique set size (their shared buffers would otherwise be counted once per backend). CPU for
    PostgreSQL is the postmaster's, its live backends' and the ended ones' (autovacuum workers,
    closed connections)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak: dict[str, int] = dict.fromkeys(processes, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu_total(self, name: str) -> float:
        p = self.procs[name]
        t = p.cpu_times()
        total = t.user + t.system
        if name == "postgres":
            total += t.children_user + t.children_system
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

    def _add_launchers(self) -> None:
        """Each executor's job launcher (its child, started with its first job of another
        user's): counted on its own, as the parent of the jobs, not one of their processes."""
        for name, p in list(self.procs.items()):
            if not name.startswith("executor"):
                continue
            with contextlib.suppress(psutil.Error):
                for c in p.children():
                    if c.cmdline()[-1:] == ["scns-launcher"]:
                        launcher = name.replace("executor", "launcher", 1)
                        self.procs[launcher] = c
                        self.peak.setdefault(launcher, 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in list(self.procs):
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], self._memory(name))
            self._stop.wait(0.1)

    def cpu_totals(self) -> dict[str, float]:
        self._add_launchers()
        totals = {}
        for n in self.procs:
            with contextlib.suppress(psutil.Error):
                totals[n] = self._cpu_total(n)
        return totals

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def cpu_used(sampler: Sampler | None) -> Iterator[dict[str, float]]:
    """CPU seconds each service, the bench client and the whole machine use in the block
    (nothing without a sampler: a system started elsewhere)."""
    used: dict[str, float] = {}
    before = sampler.cpu_totals() if sampler else {}
    me0 = sum(os.times()[:2])
    busy0 = machine_busy_s()
    yield used
    if sampler:
        after = sampler.cpu_totals()
        # a launcher started during the block (with its executor's first job) counts from 0
        used.update({n: round(after[n] - before.get(n, 0.0), 2) for n in after
                     if n in before or n.startswith("launcher")})
        used["bench-client"] = round(sum(os.times()[:2]) - me0, 2)
        # everything: the services, the jobs' own processes (their wrappers, shells), the
        # kernel's work for them, and whatever else runs here
        used["machine"] = round(machine_busy_s() - busy0, 2)


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
    # one admin token submits at hundreds a second: the gateway's per-token rate limit would
    # measure itself (BENCH_ENV="SCNS_RATE_LIMIT_RPS=100" puts it back)
    env["SCNS_RATE_LIMIT_RPS"] = "0"
    if args.array and args.array > DEFAULT_MAX_ARRAY_SIZE:
        env["SCNS_MAX_ARRAY_SIZE"] = str(args.array)
    env = bench_env(env)  # KEY=value ... in $BENCH_ENV: the system's env
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
                   "concurrency": args.concurrency, "load": args.load, "array": args.array,
                   "rate": args.rate, "in_flight": args.in_flight},
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
    reference = results.get("reference_naive_arq", {}).get("jobs_per_s")
    for poll in args.poll:
        round_ = await one_system(args, poll)
        if reference and "load" in round_:
            round_["ratio_to_naive_arq"] = round(
                round_["load"]["end_to_end_jobs_per_s"] / reference, 3)
        if reference and "array" in round_:
            round_["array_ratio_to_naive_arq"] = round(
                round_["array"]["elements_per_s"] / reference, 3)
        results["rounds"].append(round_)
        print_round(round_)
    return results


async def one_system(args: argparse.Namespace, poll: float) -> dict[str, Any]:
    """Every round on one system: idle, then load, array and rate as asked."""
    round_: dict[str, Any] = {"arq_poll_s": poll}
    profiles: dict[str, Path] = {}
    with system(args, poll) as (url, db_url, pids):
        db = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
        try:
            sampler = Sampler(pids) if pids else None
            with sampler or contextlib.nullcontext():
                round_["idle"] = await idle_round(url, db, args.idle)
                round_["idle"]["resources_server_time"] = await resources_timing(url)
                if args.load:
                    with cpu_used(sampler) as cpu, profiling(args.profile, pids) as profiles:
                        round_["load"] = await load_round(url, db, args.jobs, args.concurrency)
                    round_["load_cpu_seconds"] = cpu
                if args.array:
                    await asyncio.sleep(SETTLE_S)
                    with cpu_used(sampler) as cpu:
                        round_["array"] = await array_round(url, db, args.array)
                    round_["array_cpu_seconds"] = cpu
                if args.rate:
                    await asyncio.sleep(SETTLE_S)
                    with cpu_used(sampler) as cpu:
                        round_["rate"] = await rate_round(url, db, args.jobs, args.rate,
                                                          args.in_flight)
                    round_["rate_cpu_seconds"] = cpu
            round_["peak_rss_mb"] = {k: round(v / 2**20, 1)
                                     for k, v in (sampler.peak if sampler else {}).items()}
        finally:
            await db.close()
    if profiles:
        round_["profile"] = {name: summarise(path, args.jobs) for name, path in profiles.items()}
    return round_


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
    idle = r["idle"]
    print(f"\n== arq poll delay {r['arq_poll_s']} s")
    print(f"  idle  submit->start  p50 {idle['submit_to_start_ms']['p50']} ms   "
          f"p99 {idle['submit_to_start_ms']['p99']} ms;  GET /resources server time "
          f"p50 {idle['resources_server_time']['p50_ms']} ms p99 "
          f"{idle['resources_server_time']['p99_ms']} ms")
    if "load" in r:
        print_load(r)
    if "array" in r:
        print_array(r)
    if "rate" in r:
        print_rate(r)
    if r["peak_rss_mb"]:
        print("  peak RSS MB  " + "  ".join(f"{k} {v}" for k, v in sorted(r["peak_rss_mb"]
                                                                         .items())))


def print_phases(x: dict[str, Any]) -> None:
    print(f"        submit->allocate {x['submit_to_allocate_ms']}  allocate->start "
          f"{x['allocate_to_start_ms']}  start->finish {x['start_to_finish_ms']}")
    print(f"        peak backlog  {x['peak_backlog']}"
          + (f"   NOT COMPLETED {x['not_completed']}" if x.get("not_completed") else ""))


def print_load(r: dict[str, Any]) -> None:
    load = r["load"]
    print(f"  load  {load['jobs']} jobs: {load['submits_per_s']} submits/s, "
          f"{load['end_to_end_jobs_per_s']} jobs/s end to end, "
          f"completed {load['completed']}"
          + (f"  ({r['ratio_to_naive_arq']} x the naive arq worker)"
             if "ratio_to_naive_arq" in r else ""))
    print(f"        submit->start  p50 {load['submit_to_start_ms']['p50']} ms   "
          f"p99 {load['submit_to_start_ms']['p99']} ms")
    print_phases(load)
    print_cpu("load", r.get("load_cpu_seconds", {}), load["jobs"], "job")
    for name, prof in sorted(r.get("profile", {}).items()):
        print(f"  profile {name}: {prof.get('ms_per_job')} ms CPU/job sampled; by package: "
              + ", ".join(f"{k} {v}" for k, v in prof.get("self_by_package", {}).items()))
        for fn, v in prof.get("ours_inclusive", {}).items():
            print(f"      {v:7.3f}  {fn}")


def print_array(r: dict[str, Any]) -> None:
    a = r["array"]
    rate, target = a["elements_per_s"], a["target_elements_per_s"]
    verdict = "met" if rate is not None and rate >= target else "MISSED"
    print(f"  array {a['elements']} elements (one POST, accepted in {a['accept_s']} s): "
          f"{rate} elements/s end to end (target >= {target:g}: {verdict}), "
          f"completed {a['completed']}"
          + (f"  ({r['array_ratio_to_naive_arq']} x the naive arq worker)"
             if "array_ratio_to_naive_arq" in r else ""))
    print(f"        submit->start  p50 {a['submit_to_start_ms']['p50']} ms   "
          f"p99 {a['submit_to_start_ms']['p99']} ms;  array submitted -> last element "
          f"finished {a['first_submit_to_last_finish_s']} s")
    print_phases(a)
    print_cpu("array", r.get("array_cpu_seconds", {}), a["elements"], "element")


def print_rate(r: dict[str, Any]) -> None:
    x = r["rate"]
    lat = x["submit_to_start_ms"]
    offered, p99_target = x["target"]["offered_per_s"], x["target"]["submit_to_start_p99_ms"]
    verdict = "met" if lat["p99"] <= p99_target else "MISSED"
    if x["sent_per_s"] < 0.97 * offered:  # a lighter load than the target's: no verdict on it
        verdict += f" at {x['sent_per_s']}/s sent, below the target's rate"
    print(f"  rate  {x['jobs']} jobs offered at {x['offered_per_s']:g}/s: sent at "
          f"{x['sent_per_s']}/s" + (" (THE CLIENT FELL BEHIND)" if x["fell_behind"] else "")
          + f", answered {x['accepted_per_s']}/s, {x['end_to_end_jobs_per_s']} jobs/s end to "
          f"end, completed {x['completed']}")
    print(f"        submit->start  p50 {lat['p50']} ms   p90 {lat['p90']} ms   "
          f"p99 {lat['p99']} ms   max {lat.get('max')} ms  (target p99 <= {p99_target:g} ms "
          f"at {offered:g}/s: {verdict})")
    print(f"        send lag {x['send_lag_ms']}  submit answered in {x['submit_answer_ms']}  "
          f"in flight peak {x['peak_in_flight']}/{x['in_flight_limit']}"
          + (f"  SUBMIT ERRORS {x['submit_errors']}" if x["submit_errors"] else ""))
    print_phases(x)
    print_cpu("rate", r.get("rate_cpu_seconds", {}), x["jobs"], "job")


def print_cpu(label: str, seconds: dict[str, float], count: int, unit: str) -> None:
    """CPU seconds per process in a round, and per job (or element) of it."""
    if not seconds:
        return
    cpu = dict(seconds)
    machine = cpu.pop("machine", None)
    print(f"  CPU s ({label}) " + "  ".join(f"{k} {v}" for k, v in sorted(cpu.items())))
    services = sum(cpu.values())
    print(f"  CPU ms/{unit}   services and bench client {1000 * services / count:.2f}"
          + (f", whole machine {1000 * machine / count:.2f} (the jobs' own "
             "processes and the kernel's work for them included)" if machine else ""))
    print(f"  CPU ms/{unit} by process  " + "  ".join(
        f"{k} {1000 * v / count:.3f}" for k, v in sorted(cpu.items())))


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
    ap.add_argument("--no-load", dest="load", action="store_false",
                    help="skip the closed-loop load round")
    ap.add_argument("--array", type=int, metavar="N",
                    help="a round of one N-element array of `true` (target >= 1,000/s)")
    ap.add_argument("--rate", type=float, metavar="R",
                    help="an open-loop round: --jobs submits offered at R/s (target: "
                         "submit->start p99 <= 1 s at 300/s)")
    ap.add_argument("--in-flight", type=int, default=256,
                    help="most unanswered submits in the --rate round")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.url and not args.database_url:
        ap.error("--url needs --database-url (latencies come from PostgreSQL's timestamps)")
    if args.profile and not args.load:
        ap.error("--profile samples the load round: drop --no-load")
    if (args.array is not None and args.array < 1) or (args.rate is not None and args.rate <= 0):
        ap.error("--array and --rate must be positive")
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
