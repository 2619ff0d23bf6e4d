"""Load-and-abuse benchmark (issue 15): does a steady workload keep its pace, and does the gateway
stay small and come back to where it was, while clients abuse it? (Not a test; loopback only.)

    python bench/abuse.py                                   # defaults: about 3 minutes on 2 cores
    python bench/abuse.py --followers 200 --duration 15     # a quick look
    python bench/abuse.py --followers 5000 --listers 8 --big-rate 5 --duration 120
    BENCH_ENV="SCNS_LOG_LEVEL=INFO" python bench/abuse.py   # KEY=value ...: the system's env

It starts its own system (like bench/e2e.py: its own Redis and PostgreSQL, 2 executors x 96
virtual CPUs, gateway on a free port) after raising this process's RLIMIT_NOFILE soft limit to
the hard one (the services inherit it), makes tokens (`--tokens` abuser tokens over `--users`
users, two for the steady user), gives each abuser user a long-running job to follow (every
other one prints a line a second, the rest are silent) and an array of <max page> `true` jobs
(so that its listings are full pages), then runs two phases of `--duration` s each:

1. baseline: the steady workload alone: an open-loop submitter at `--rate` jobs/s of
   `sleep 0.2` jobs (one token) and an open-loop prober at `--probe-rate`/s doing
   GET /jobs/{id} on the submitter's latest jobs (another token of the same user);
2. abuse: the same steady workload while bench/abuse_clients.py, in a process of its own,
   runs every abuser at once (see its docstring): waves of `--followers` follow connections
   (log `?follow=1` and SSE `/events`) opened, held `--hold` s and dropped abruptly (some with
   an RST, `--idle-fraction` of them never reading); `--listers` closed loops of
   GET /jobs?limit=<MAX_PAGE>; submissions of the largest allowed script (held) at
   `--big-rate`/s, every tenth one byte over; `--slow-headers` clients sending a request a byte
   every `--slow-byte` s; `--slow-readers` clients reading a maximum listing at
   `--slow-read-bps` through a 4 KiB receive buffer.

From the moment the abusers have ended it watches (every second, up to `--settle` s) for the
gateway's client connections and tasks to come back to what they were after the baseline (a
tolerance of `--tolerance`, for background tasks such as the event hub and metric refreshes),
and says how long that took.

Measured: the steady jobs completed per second within each window (PostgreSQL's finished_at,
against PostgreSQL's clock), GET /jobs/{id} latency at the client (p50/p99; the server's own
time from Server-Timing beside it), every answer's status per source, the gateway's RSS every
0.5 s (psutil), its TCP sockets on its API port (psutil; baseline, peak, after) and, when its
/metrics has them, the gauges scns_gateway_connections, scns_gateway_tasks and
scns_gateway_streams; CPU seconds of the gateway, the abusers, this process and the machine.

Verdict (PASS/FAIL each): steady jobs/s during the abuse >= 0.8 x the baseline's; p99 of
GET /jobs/{id} during the abuse <= 100 ms (the probes answered 200, and those that failed at
the client, with the time they took; non-200 answers are shown apart); peak gateway RSS
<= 150 MB; no answer >= 500 other than a 503 with Retry-After (a 503 without one is a
failure), steady and abusers alike; gateway client sockets and the gauges back to the baseline
within the tolerance. Client-side errors (connections refused, reset
or timed out at the abusers, the abusers' own abrupt drops) are counted and shown but are not
failures. The steady client's non-2xx answers (a rate limit that hits the well-behaved client)
are shown apart. Prints the figures and writes them as JSON to bench/results/abuse-<time>.json.
On a 2-core machine the abusers' own CPU competes with the gateway's: it is shown.
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
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.abuse_clients import Tally, quiet_worker, scan_sockets
from bench.e2e_rounds import ACTIVE, bench_env, spread
from services.cli.up import System, _pg_dir
from services.gateway.validation import MAX_SCRIPT_BYTES

try:  # the largest page a listing may ask for
    from services.gateway.validation import MAX_PAGE
except ImportError:  # where it was first
    from services.gateway.jobs import MAX_PAGE  # type: ignore[attr-defined, no-redef]
from shared.localinfra import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8  # steady jobs/s under abuse >= 0.8 x the baseline's ("within 20 %")
TARGET_P99_MS = 100.0  # GET /jobs/{id} p99 during the abuse
TARGET_RSS_MB = 150.0  # the gateway's peak RSS
GAUGES = ("scns_gateway_connections", "scns_gateway_tasks", "scns_gateway_streams")
STEADY_SCRIPT = "sleep 0.2\n"
IN_FLIGHT = 64  # the steady client's most unanswered requests, each kind
REQUEST_TIMEOUT_S = 10.0
PAUSE_S = 3.0  # between the phases, and before a baseline snapshot
MONITOR_S = 2.0  # sockets and gauges, sampled during the phases
RSS_EVERY_S = 0.5
QUIET_S = 3.0  # the gateway's CPU and Redis's commands/s measured over this long, quiet
FD_MARGIN = 256  # descriptors besides the abusers' connections, each side
JSON_BODY = {"Content-Type": "application/json"}
SLOWEST = 12  # probes listed with their start (wall clock) and times, to match with logs


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# --- file descriptors -----------------------------------------------------------------------
def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one (the system's processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if want > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fit_followers(args: argparse.Namespace, soft: int) -> str | None:
    """Fewer followers when the abusers' connections would not fit the limit (each side:
    the abusers' process and the gateway hold one descriptor per connection)."""
    others = args.slow_headers + args.slow_readers + args.listers + 2 + FD_MARGIN
    room = soft - others
    if args.followers <= room:
        return None
    wanted, args.followers = args.followers, max(room, 0)
    return (f"--followers {wanted} does not fit RLIMIT_NOFILE {soft} with the other abusers: "
            f"{args.followers} per wave")


# --- the system -------------------------------------------------------------------------------
@contextlib.contextmanager
def started(args: argparse.Namespace) -> Iterator[tuple[System, str]]:
    data = Path(tempfile.mkdtemp(prefix="scns-abuse-"))
    os.chmod(data, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCNS_")}
    env["SCNS_DRAIN_GRACE_S"] = "2"  # a stop does not wait long for the jobs to follow
    env = bench_env(env)  # KEY=value ... in $BENCH_ENV: the system's env
    settings = Settings.from_env({**env, "SCNS_DATA_DIR": str(data),
                                  "SCNS_GATEWAY_PORT": str(free_port()),
                                  "SCNS_WORKER_ID": "abuse", "SCNS_LOG_LEVEL": "WARNING"})
    sysm = System(settings, env, workers=args.workers, cpus=args.cpus, echo=False)
    try:
        yield sysm, sysm.start()
    finally:
        sysm.stop()
        if args.keep:
            print(f"kept the system's data and logs in {data}")
        else:
            pg = _pg_dir(data)
            if not pg.is_relative_to(data) and pg.parent.name.startswith("scns-root-"):
                shutil.rmtree(pg.parent, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)


# --- set-up: tokens, jobs to follow, pages to list ------------------------------------------
@dataclass
class Setup:
    admin: str
    steady: list[str]  # two tokens of the user `bench-steady`: submitter, prober
    abusers: list[dict[str, Any]]  # {token, user, follow_job}
    seed_ids: list[int]  # the steady user's first jobs: the prober's targets at first
    long_jobs: list[int]


async def post(s: aiohttp.ClientSession, path: str, body: dict[str, Any], token: str
               ) -> dict[str, Any]:
    async with s.post(path, data=orjson.dumps(body), headers={**auth(token), **JSON_BODY}) as r:
        out = orjson.loads(await r.read())
        if r.status not in (200, 201):
            raise RuntimeError(f"POST {path} {body.get('user') or body.get('name')}: "
                               f"{r.status} {out}")
        return dict(out)


async def wait_states(db: Any, ids: list[int], done: Callable[[dict[str, int]], bool],
                      within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while True:
        rows = await db.fetch("SELECT state, count(*) AS n FROM jobs WHERE id = ANY($1) OR "
                              "array_job_id = ANY($1) GROUP BY state", ids)
        counts = {r["state"]: int(r["n"]) for r in rows}
        if done(counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {within_s:g}s: {counts}")
        await asyncio.sleep(0.5)


async def setup(url: str, db: Any, admin: str, args: argparse.Namespace) -> Setup:
    users = [f"abuser-{u}" for u in range(args.users)]
    lifetime = int(4 * args.duration + args.settle + 900)
    async with aiohttp.ClientSession(url) as s:
        steady = [(await post(s, "/api/v1/tokens", {"user": "bench-steady"}, admin))["token"]
                  for _ in range(2)]
        tokens = [(await post(s, "/api/v1/tokens", {"user": users[t % len(users)]},
                              admin))["token"] for t in range(args.tokens)]
        follow: dict[str, int] = {}
        arrays = []
        for u, user in enumerate(users):
            token = tokens[u]  # token u belongs to user u (t % users)
            script = ("i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 1; done\n"
                      if u % 2 == 0 else f"sleep {lifetime}\n")
            job = await post(s, "/api/v1/jobs", {"script": script, "name": "abuse-follow",
                                                 "time_limit": lifetime}, token)
            follow[user] = job["id"]
            arrays.append((await post(s, "/api/v1/jobs", {
                "script": "true\n", "name": "abuse-page", "array": f"0-{MAX_PAGE - 1}"},
                token))["id"])
        seed = [(await post(s, "/api/v1/jobs", {"script": "true\n", "name": "steady-seed"},
                            steady[0]))["id"] for _ in range(10)]
    await wait_states(db, list(follow.values()), lambda c: c.get("RUNNING") == len(follow),
                      60, "the jobs to follow")
    await wait_states(db, arrays + seed, lambda c: not set(c) & set(ACTIVE),
                      60 + len(arrays) * MAX_PAGE / 50, "the listing arrays")
    abusers = [{"token": tok, "user": users[t % len(users)],
                "follow_job": follow[users[t % len(users)]]} for t, tok in enumerate(tokens)]
    return Setup(admin=admin, steady=steady, abusers=abusers, seed_ids=seed,
                 long_jobs=list(follow.values()))


# --- the steady workload ------------------------------------------------------------------------
@dataclass
class Steady:
    """Open loops (each request sent on its schedule whatever the earlier ones' answers, at
    most IN_FLIGHT unanswered): submits of `sleep 0.2` and GET /jobs/{id} of recent ones."""

    url: str
    submit_token: str
    probe_token: str
    rate: float
    probe_rate: float
    tag: str
    seed_ids: list[int]
    tally: Tally = field(default_factory=Tally)
    ids: list[int] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    submit_server_ms: list[float] = field(default_factory=list)  # the 201s' Server-Timing
    probe_ms: list[float] = field(default_factory=list)  # every probe
    # the verdict's: answered 200, or failed at the client (timeout, reset: with the time it
    # took); a non-200 answer (a fast 429, say) is not a served probe and is shown apart
    probe_verdict_ms: list[float] = field(default_factory=list)
    probe_server_ms: list[float] = field(default_factory=list)  # their Server-Timing
    # (wall-clock start, client ms, server ms or None) of each probe: the slowest are shown
    probe_log: list[tuple[float, float, float | None]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def run(self, duration_s: float) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        body = orjson.dumps({"script": STEADY_SCRIPT, "name": self.tag})
        async with aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=IN_FLIGHT), timeout=timeout,
                headers=auth(self.submit_token)) as sub, aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=IN_FLIGHT), timeout=timeout,
                headers=auth(self.probe_token)) as probe:
            await asyncio.gather(
                self._open_loop(duration_s, self.rate, "steady-submit",
                                lambda: self._submit(sub, body)),
                self._open_loop(duration_s, self.probe_rate, "steady-probe",
                                lambda: self._probe(probe)))

    async def _open_loop(self, duration_s: float, rate: float, source: str,
                         send: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        for i in range(int(duration_s * rate)):
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            if len(tasks) >= IN_FLIGHT:
                self.tally.outcome(source, "not sent: the client's in-flight cap was full")
                continue
            task = asyncio.create_task(send())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _submit(self, s: aiohttp.ClientSession, body: bytes) -> None:
        t = time.perf_counter()
        try:
            async with s.post("/api/v1/jobs", data=body, headers=JSON_BODY) as r:
                raw = await r.read()
                self.tally.answer("steady-submit", r.status, "Retry-After" in r.headers, raw)
                if r.status == 201:
                    self.ids.append(orjson.loads(raw)["id"])
                    self.submit_server_ms += server_time(r.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.tally.error("steady-submit", e)
        finally:
            self.submit_ms.append((time.perf_counter() - t) * 1000)

    async def _probe(self, s: aiohttp.ClientSession) -> None:
        job = self.rng.choice(self.ids[-100:] or self.seed_ids)
        t, wall, server = time.perf_counter(), time.time(), None
        try:
            async with s.get(f"/api/v1/jobs/{job}") as r:
                body = await r.read()
                ms = (time.perf_counter() - t) * 1000
                self.tally.answer("steady-probe", r.status, "Retry-After" in r.headers, body)
                if r.status == 200:
                    self.probe_verdict_ms.append(ms)
                    self.probe_server_ms += (st := server_time(r.headers))
                    server = st[0] if st else None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.tally.error("steady-probe", e)
            self.probe_verdict_ms.append((time.perf_counter() - t) * 1000)
        finally:
            self.probe_ms.append((time.perf_counter() - t) * 1000)
            self.probe_log.append((wall, self.probe_ms[-1], server))

    def figures(self) -> dict[str, Any]:
        def non_2xx(source: str) -> int:
            return sum(n for k, n in self.tally.statuses[source].items()
                       if not k.startswith("2"))

        return {
            "submits_accepted": len(self.ids), "submit_ms": spread(self.submit_ms, 50, 99),
            "submit_server_ms": spread(self.submit_server_ms, 50, 99),
            "probes": len(self.probe_ms), "probe_ms": spread(self.probe_ms, 50, 99),
            "probe_verdict_ms": spread(self.probe_verdict_ms, 50, 99),
            "probe_server_ms": spread(self.probe_server_ms, 50, 99),
            "non_2xx": {"submit": non_2xx("steady-submit"), "probe": non_2xx("steady-probe")},
            "slowest_probes": [{"at": round(at, 3), "ms": round(ms, 1), "server_ms": server}
                               for at, ms, server in sorted(self.probe_log, key=lambda p: -p[1])
                               [:SLOWEST]],
        }


def server_time(headers: Any) -> list[float]:
    """The gateway's own time for a request (its Server-Timing header), if it sent one."""
    timing = headers.get("Server-Timing", "")
    return [float(timing.split("dur=")[1].split(";")[0])] if "dur=" in timing else []


async def job_figures(db: Any, tag: str, t0: datetime, t1: datetime) -> dict[str, Any]:
    """The phase's jobs from PostgreSQL: completed within [t0, t1] (its own clock)."""
    rows = await db.fetch("SELECT state, submitted_at, started_at, finished_at FROM jobs "
                          "WHERE name = $1", tag)
    window = (t1 - t0).total_seconds()
    done = sum(1 for r in rows if r["state"] == "COMPLETED" and r["finished_at"] is not None
               and t0 <= r["finished_at"] <= t1)
    start_ms = [(r["started_at"] - r["submitted_at"]).total_seconds() * 1000 for r in rows
                if r["started_at"] is not None]
    return {"jobs": len(rows), "states": dict(Counter(r["state"] for r in rows)),
            "window_s": round(window, 2), "completed_in_window": done,
            "completed_per_s": round(done / window, 2) if window > 0 else None,
            "submit_to_start_ms": spread(start_ms, 50, 99)}


async def wait_tag_done(db: Any, tag: str, within_s: float) -> int:
    """Until none of the phase's jobs is active; how many still are."""
    deadline = time.monotonic() + within_s
    while True:
        left = int(await db.fetchval("SELECT count(*) FROM jobs WHERE name = $1 AND "
                                     "state = ANY($2::text[])", tag, ACTIVE))
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


# --- the gateway, watched ------------------------------------------------------------------
def parse_gauges(text: str) -> dict[str, float]:
    """The GAUGES in Prometheus text (their samples summed over labels; each labelled sample
    also by itself)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name not in GAUGES:
            continue
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v
        if "{" in sample:
            out[sample] = v
    return out


class GatewayWatch:
    """The gateway process: RSS every 0.5 s (a thread, peak per phase), and on demand its
    sockets (psutil, in a process of its own) and gauges (/metrics)."""

    def __init__(self, pid: int, port: int, url: str, admin: str, redis_url: str) -> None:
        self.proc = psutil.Process(pid)
        self.port = port
        self.url = url
        self.admin = admin
        self.redis_url = redis_url
        self.scan_ms_max = 0.0  # the longest socket scan (it runs in a thread of this process)
        self.phase = "setup"
        self.rss_peak: dict[str, int] = {}
        self.peaks: dict[str, dict[str, float]] = {}
        self.sockets_source = ""
        self.scanner = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=quiet_worker)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.session: aiohttp.ClientSession | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = self.proc.memory_info().rss
                self.rss_peak[self.phase] = max(self.rss_peak.get(self.phase, 0), rss)
            self._stop.wait(RSS_EVERY_S)

    async def __aenter__(self) -> GatewayWatch:
        # a connection per scrape, closed after it: none left open to count
        self.session = aiohttp.ClientSession(
            self.url, connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=15), headers=auth(self.admin))
        self._thread.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scanner.shutdown(wait=True, cancel_futures=True)
        if self.session is not None:
            await self.session.close()

    async def sockets(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self.scanner, scan_sockets, self.proc.pid, self.port)
        self.sockets_source = out.pop("source")
        self.scan_ms_max = max(self.scan_ms_max, out.pop("scan_ms"))
        return out

    async def gauges(self) -> dict[str, float] | None:
        assert self.session is not None
        try:
            async with self.session.get("/metrics") as r:
                text = await r.text()
                if r.status != 200:
                    return None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        return parse_gauges(text) or None

    async def snapshot(self, *, quiet: bool = False) -> dict[str, Any]:
        snap: dict[str, Any] = {"sockets": await self.sockets()}
        snap["gauges"] = await self.gauges()
        with contextlib.suppress(psutil.Error):
            snap["threads"] = self.proc.num_threads()
            snap["fds"] = self.proc.num_fds()
            snap["rss_mb"] = round(self.proc.memory_info().rss / 2**20, 1)
        if quiet:
            snap["quiet"] = await self.quiet_rates()
        return snap

    async def quiet_rates(self) -> dict[str, float]:
        """The gateway's CPU % and Redis's commands/s over QUIET_S with no client: a handler
        left running after its client went (a log follower polls Redis every 0.5 s) shows
        here even where no gauge counts tasks. Redis serves every service: compare the
        baseline's figure with the one after the abuse, not with 0."""
        redis = Redis.from_url(self.redis_url)
        try:
            c0, cpu0, t0 = ((await redis.info("stats"))["total_commands_processed"],
                            self.cpu_s(), time.monotonic())
            await asyncio.sleep(QUIET_S)
            c1, cpu1, t1 = ((await redis.info("stats"))["total_commands_processed"],
                            self.cpu_s(), time.monotonic())
        finally:
            await redis.aclose()
        return {"gateway_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                "redis_commands_per_s": round((c1 - c0) / (t1 - t0), 1)}

    async def monitor(self, stop: asyncio.Event, phase: str) -> None:
        """Peaks of client sockets and gauges during a phase, every MONITOR_S."""
        peaks = self.peaks.setdefault(phase, {})
        while not stop.is_set():
            snap = await self.snapshot()
            values = {"client_sockets": snap["sockets"]["clients"], "fds": snap.get("fds", 0),
                      **{k: v for k, v in (snap["gauges"] or {}).items() if k in GAUGES}}
            for k, v in values.items():
                peaks[k] = max(peaks.get(k, 0), v)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_S)

    def cpu_s(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system


def back_to(snap: dict[str, Any], base: dict[str, Any], tolerance: int) -> dict[str, bool]:
    """Each figure that has a baseline: is it within `tolerance` of it?"""
    ok = {"client_sockets": snap["sockets"]["clients"] <= base["sockets"]["clients"] + tolerance}
    g, bg = snap.get("gauges") or {}, base.get("gauges") or {}
    for name in GAUGES:
        if name in g and name in bg:
            ok[name] = g[name] <= bg[name] + tolerance
    return ok


async def settle(watch: GatewayWatch, base: dict[str, Any], within_s: float, tolerance: int
                 ) -> tuple[dict[str, Any], float]:
    """From now (the abusers' end) until every figure is back within the tolerance, or
    `within_s` is up: the last snapshot and when it was taken."""
    t0 = time.monotonic()
    while True:
        snap = await watch.snapshot()
        took = time.monotonic() - t0
        if all(back_to(snap, base, tolerance).values()) or took >= within_s:
            return snap, round(took, 1)
        await asyncio.sleep(1.0)


# --- the phases --------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    url: str
    port: int
    db: Any
    setup: Setup
    watch: GatewayWatch


def abuser_config(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    return {"host": "127.0.0.1", "port": ctx.port, "duration_s": a.duration,
            "tokens": ctx.setup.abusers, "max_page": MAX_PAGE,
            "max_script_bytes": MAX_SCRIPT_BYTES, "followers": a.followers,
            "connect_concurrency": a.connect_concurrency, "hold_s": a.hold,
            "idle_fraction": a.idle_fraction, "rst_fraction": a.rst_fraction,
            "sse_fraction": a.sse_fraction, "listers": a.listers, "big_rate": a.big_rate,
            "slow_headers": a.slow_headers, "slow_byte_s": a.slow_byte,
            "slow_readers": a.slow_readers, "slow_read_bps": a.slow_read_bps,
            "slow_read_hold_s": a.slow_read_hold, "seed": a.seed}


async def start_abusers(ctx: Context) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.abuse_clients", cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(orjson.dumps(abuser_config(ctx)))
    await proc.stdin.drain()
    proc.stdin.close()
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"the abusers did not start: {line!r}")
    return proc


async def finish_abusers(proc: asyncio.subprocess.Process, within_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    out = await asyncio.wait_for(proc.stdout.read(), within_s)
    await proc.wait()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the abusers failed (exit {proc.returncode})")
    return dict(orjson.loads(out.strip().splitlines()[-1]))


async def abused(ctx: Context, proc: asyncio.subprocess.Process, base: dict[str, Any]
                 ) -> tuple[dict[str, Any], asyncio.Task[tuple[dict[str, Any], float]]]:
    """The abusers' tally once they are done, and the settling watch that starts then (while
    the steady client's last answers and jobs are still coming in)."""
    out = await finish_abusers(proc, ctx.args.duration + 60)
    ctx.watch.phase = "settle"
    print(f"settle: up to {ctx.args.settle:g} s ...")
    return out, asyncio.create_task(settle(ctx.watch, base, ctx.args.settle,
                                           ctx.args.tolerance))


async def phase(ctx: Context, name: str, base: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The steady workload for the duration; with `base` (the gateway after the baseline),
    the abusers too, and then the settling watch."""
    args = ctx.args
    ctx.watch.phase = name
    steady = Steady(ctx.url, ctx.setup.steady[0], ctx.setup.steady[1], args.rate,
                    args.probe_rate, f"steady-{name}", ctx.setup.seed_ids)
    proc = await start_abusers(ctx) if base is not None else None
    abusers = asyncio.create_task(abused(ctx, proc, base)) if proc and base else None
    settling: asyncio.Task[tuple[dict[str, Any], float]] | None = None
    stop = asyncio.Event()
    monitor = asyncio.create_task(ctx.watch.monitor(stop, name))
    cpu0 = (ctx.watch.cpu_s(), machine_busy_s(), sum(os.times()[:2]))
    out: dict[str, Any] = {}
    try:
        try:
            t0 = await ctx.db.fetchval("SELECT clock_timestamp()")
            await steady.run(args.duration)
            if abusers is not None:
                out["abusers"], settling = await abusers
        finally:
            stop.set()
            await monitor
            if abusers is not None and not abusers.done():
                abusers.cancel()
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        out["cpu_s"] = {"gateway": round(ctx.watch.cpu_s() - cpu0[0], 2),
                        "machine": round(machine_busy_s() - cpu0[1], 2),
                        "bench_steady_client": round(sum(os.times()[:2]) - cpu0[2], 2)}
        if "abusers" in out:
            out["cpu_s"]["abusers"] = out["abusers"]["cpu_s"]
        out["not_finished_after_30s"] = await wait_tag_done(ctx.db, steady.tag, 30)
        out["jobs"] = await job_figures(ctx.db, steady.tag, t0,
                                        t0 + timedelta(seconds=args.duration))
        out["steady"] = steady.figures()
        out["tally"] = steady.tally.as_json()
        if settling is not None:
            out["gateway_after"], out["settled_in_s"] = await settling
    finally:
        if settling is not None and not settling.done():
            settling.cancel()
    return out


async def run(args: argparse.Namespace, sysm: System, url: str) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    gateway = sysm.child("gateway").proc.pid
    db = await asyncpg.create_pool(sysm.db_url, min_size=1, max_size=2)
    results: dict[str, Any] = {}
    long_jobs: list[int] = []
    try:
        async with GatewayWatch(gateway, port, url, sysm.admin_token,
                                sysm.redis_url) as watch:
            print(f"system up at {url}; setting up tokens, jobs to follow, pages to list ...")
            s = await setup(url, db, sysm.admin_token, args)
            long_jobs = s.long_jobs
            ctx = Context(args, url, port, db, s, watch)
            watch.phase = "idle"
            await asyncio.sleep(PAUSE_S)
            results["gateway_idle"] = await watch.snapshot()
            print(f"baseline: {args.duration:g} s of steady load ...")
            results["baseline"] = await phase(ctx, "baseline")
            watch.phase = "pause"
            await asyncio.sleep(PAUSE_S)
            base = results["gateway_baseline"] = await watch.snapshot(quiet=True)
            print(f"abuse: {args.duration:g} s of steady load with the abusers ...")
            results["abuse"] = await phase(ctx, "abuse", base)
            # once the abuse phase's jobs are done, as the baseline's was measured
            results["gateway_after"] = results["abuse"].pop("gateway_after")
            results["gateway_after"]["quiet"] = await watch.quiet_rates()
            results["settled_in_s"] = results["abuse"].pop("settled_in_s")
            results["gateway_peaks"] = watch.peaks
            results["gateway_rss_peak_mb"] = {k: round(v / 2**20, 1)
                                              for k, v in watch.rss_peak.items()}
            results["sockets_counted"] = watch.sockets_source
            results["socket_scan_ms_max"] = round(watch.scan_ms_max, 1)
    finally:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            await cancel_jobs(url, sysm.admin_token, long_jobs)
        await db.close()
    return results


async def cancel_jobs(url: str, admin: str, ids: list[int]) -> None:
    """The long jobs end before the system stops (else they hold the executors' drain)."""
    async with aiohttp.ClientSession(url, headers=auth(admin),
                                     timeout=aiohttp.ClientTimeout(total=10)) as s:
        for job in ids:
            async with s.delete(f"/api/v1/jobs/{job}") as r:
                await r.read()


# --- the verdict ---------------------------------------------------------------------------
def all_statuses(r: dict[str, Any]) -> Tally:
    t = Tally()
    for name in ("baseline", "abuse"):
        t.merge(r[name]["tally"])
    t.merge(r["abuse"].get("abusers", {}).get("tally", {}))
    return t


def verdict(r: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    base, abuse = r["baseline"]["jobs"], r["abuse"]["jobs"]
    ratio = (abuse["completed_per_s"] / base["completed_per_s"]
             if base["completed_per_s"] else None)
    abuse_p99 = r["abuse"]["steady"]["probe_verdict_ms"].get("p99")
    if abuse_p99 is not None and math.isnan(abuse_p99):  # no probe measured
        abuse_p99 = None
    rss = max(r["gateway_rss_peak_mb"].values(), default=0.0)
    failures = sum(sum(c.values()) for c in all_statuses(r).failures.values())
    out = [
        {"name": "steady jobs/s under abuse / baseline", "value": None if ratio is None
         else round(ratio, 3), "target": f">= {TARGET_RATIO}", "pass": ratio is not None
         and ratio >= TARGET_RATIO},
        {"name": "GET /jobs/{id} p99 under abuse (ms; 200s and client-side failures)",
         "value": abuse_p99,
         "target": f"<= {TARGET_P99_MS:g}", "pass": abuse_p99 is not None
         and abuse_p99 <= TARGET_P99_MS},
        {"name": "peak gateway RSS (MB)", "value": rss, "target": f"<= {TARGET_RSS_MB:g}",
         "pass": rss <= TARGET_RSS_MB},
        {"name": "answers >= 500 other than 503 with Retry-After", "value": failures,
         "target": "0", "pass": failures == 0},
    ]
    base_snap, after = r["gateway_baseline"], r["gateway_after"]
    ok = back_to(after, base_snap, args.tolerance)
    for key, passed in ok.items():
        if key == "client_sockets":
            was, now = base_snap["sockets"]["clients"], after["sockets"]["clients"]
            name = "gateway client sockets (psutil): baseline -> after"
        else:
            was, now = base_snap["gauges"][key], after["gauges"][key]
            name = f"{key}: baseline -> after"
        out.append({"name": name, "value": f"{was:g} -> {now:g}",
                    "target": f"<= baseline + {args.tolerance}", "pass": passed})
    for name in GAUGES:
        if name not in ok:
            out.append({"name": f"{name}: baseline -> after", "value": "absent from /metrics",
                        "target": f"<= baseline + {args.tolerance}", "pass": None})
    return out


# --- printing ----------------------------------------------------------------------------
def fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "-"


def print_phase(name: str, p: dict[str, Any]) -> None:
    j, s = p["jobs"], p["steady"]
    print(f"\n== {name}")
    print(f"  steady jobs: {j['completed_in_window']} completed in the {j['window_s']} s "
          f"window = {j['completed_per_s']} jobs/s; {s['submits_accepted']} answered 201, "
          f"{j['jobs']} in PostgreSQL ({fmt_counts(j['states'])}); submit->start "
          f"{j['submit_to_start_ms']} ms")
    print(f"  submit answered in {s['submit_ms']} ms; server time of the 201s "
          f"{s['submit_server_ms']} ms")
    print(f"  GET /jobs/{{id}}: {s['probes']} probes, 200s and client-side failures "
          f"{s['probe_verdict_ms']} ms (every answer {s['probe_ms']}); server time of the "
          f"200s {s['probe_server_ms']} ms")
    tally = p["tally"]
    for source in ("steady-submit", "steady-probe"):
        extra = ""
        if tally["client_errors"].get(source):
            extra += f"; client errors {fmt_counts(tally['client_errors'][source])}"
        if tally["outcomes"].get(source):
            extra += f"; {fmt_counts(tally['outcomes'][source])}"
        print(f"  {source}: {fmt_counts(tally['statuses'].get(source, {}))}{extra}")
    print(f"  CPU s: {fmt_counts(p['cpu_s'])}")
    if "abusers" in p:
        print_abusers(p["abusers"])


def print_abusers(a: dict[str, Any]) -> None:
    t = a["tally"]
    print(f"  abusers: {a['waves']} follower waves, {a['connections_opened']} raw connections "
          f"opened (peak {a['peak_open_connections']} open at once); bytes read "
          f"{fmt_counts(a['bytes_read'])}; a listing page held {a['listed_items_per_page']} "
          f"jobs; slow-header requests cut by the server {a['slow_headers_cut_by_server_after_s']}")
    sources = sorted(set(t["statuses"]) | set(t["client_errors"]) | set(t["outcomes"]))
    for source in sources:
        print(f"    {source}: statuses {fmt_counts(t['statuses'].get(source, {}))}")
        if t["client_errors"].get(source):
            print(f"      client-side errors (not failures): "
                  f"{fmt_counts(t['client_errors'][source])}")
        if t["outcomes"].get(source):
            print(f"      outcomes: {fmt_counts(t['outcomes'][source])}")


def print_gateway(r: dict[str, Any]) -> None:
    def line(label: str, snap: dict[str, Any]) -> str:
        s = snap["sockets"]
        g = snap.get("gauges")
        return (f"  {label}: client sockets {s['clients']} ({fmt_counts(s['clients_by_state'])})"
                f", other sockets {s['other']}, fds {snap.get('fds')}, threads "
                f"{snap.get('threads')}, RSS {snap.get('rss_mb')} MB; gauges "
                + (fmt_counts({k: int(v) for k, v in g.items()}) if g else
                   "absent from /metrics"))

    print("\n== gateway")
    print(line("idle    ", r["gateway_idle"]))
    print(line("baseline", r["gateway_baseline"]))
    print(line("after   ", r["gateway_after"]) + f"  ({r['settled_in_s']} s after the abusers "
          "ended)")
    for ph, peaks in r["gateway_peaks"].items():
        print(f"  peak during {ph}: {fmt_counts({k: int(v) for k, v in peaks.items()})}")
    print(f"  peak RSS MB by phase: {fmt_counts(r['gateway_rss_peak_mb'])}")
    print("  quiet " + str(QUIET_S) + " s, no client: baseline "
          f"{r['gateway_baseline']['quiet']}, after {r['gateway_after']['quiet']}")
    print(f"  sockets counted: {r['sockets_counted']} (psutil; the longest scan "
          f"{r['socket_scan_ms_max']} ms, in a process of its own)")


def print_verdict(r: dict[str, Any]) -> None:
    print("\n== verdict")
    for v in r["verdict"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
        print(f"  {mark}  {v['name']}: {v['value']} (target {v['target']})")
    steady = {ph: r[ph]["steady"]["non_2xx"] for ph in ("baseline", "abuse")}
    print(f"  (info) the steady client's non-2xx answers: {steady}")
    print(f"  (info) failures by source: {r['failures_by_source'] or 'none'}; client-side "
          "errors, counted but not failures, are listed per source above")
    for key, body in all_statuses(r).samples.items():
        print(f"  (info) the first {key} answer: {body[:160]}")
    q0, q1 = r["gateway_baseline"]["quiet"], r["gateway_after"]["quiet"]
    print(f"  (info) quiet, no client: gateway CPU {q0['gateway_cpu_pct']} % -> "
          f"{q1['gateway_cpu_pct']} %, Redis {q0['redis_commands_per_s']} -> "
          f"{q1['redis_commands_per_s']} commands/s (handlers left running would show here; "
          "tasks themselves are counted only by the scns_gateway_tasks gauge)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of each phase")
    ap.add_argument("--rate", type=float, default=20.0, help="steady submits/s")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="steady GET /jobs/{id}/s")
    ap.add_argument("--followers", type=int, default=2000,
                    help="follow connections per wave (log and SSE)")
    ap.add_argument("--hold", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                    help="seconds a follow connection is held before it is dropped")
    ap.add_argument("--idle-fraction", type=float, default=0.3,
                    help="followers that never read")
    ap.add_argument("--rst-fraction", type=float, default=0.5,
                    help="connections dropped with an RST (SO_LINGER 0), the rest with FIN")
    ap.add_argument("--sse-fraction", type=float, default=0.5,
                    help="followers on /events (the rest follow a job's log)")
    ap.add_argument("--connect-concurrency", type=int, default=128,
                    help="follow connections being opened at once")
    ap.add_argument("--listers", type=int, default=4,
                    help=f"closed loops of GET /jobs?limit={MAX_PAGE}")
    ap.add_argument("--big-rate", type=float, default=2.0,
                    help=f"submissions/s of a {MAX_SCRIPT_BYTES}-byte script (held; 0: none)")
    ap.add_argument("--slow-headers", type=int, default=50,
                    help="clients sending their requests a byte at a time")
    ap.add_argument("--slow-byte", type=float, default=0.1, help="seconds between their bytes")
    ap.add_argument("--slow-readers", type=int, default=50,
                    help="clients reading a maximum listing slowly")
    ap.add_argument("--slow-read-bps", type=int, default=4096, help="their bytes/s")
    ap.add_argument("--slow-read-hold", type=float, default=15.0,
                    help="seconds before a slow reader drops its answer and asks again")
    ap.add_argument("--tokens", type=int, default=8, help="abuser tokens")
    ap.add_argument("--users", type=int, default=4, help="abuser users (the tokens' owners)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds to wait for the gateway to come back to its baseline")
    ap.add_argument("--tolerance", type=int, default=5,
                    help="connections and tasks above the baseline still counted as back "
                         "(background tasks: the event hub, metric refreshes)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the system's data and logs")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.users < 1 or args.tokens < args.users:
        ap.error("--tokens must be at least --users, which must be at least 1")
    if args.duration < 5 or min(args.hold) <= 0 or args.hold[0] > args.hold[1]:
        ap.error("--duration must be at least 5 s and --hold MIN <= MAX, both positive")

    # Ctrl-C, and SIGINT or SIGTERM sent to a background run (a shell starts those with SIGINT
    # ignored): the abusers and the system are stopped, as after the last phase
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    soft, hard = raise_nofile()  # before the system starts: its processes inherit it
    notes = [n for n in [fit_followers(args, soft)] if n]
    for n in notes:
        print(f"note: {n}")
    started_at = datetime.now()
    try:
        with started(args) as (sysm, url):
            r = asyncio.run(run(args, sysm, url))
    except KeyboardInterrupt:
        print("\ninterrupted: the system is stopped")
        return 130
    r["verdict"] = verdict(r, args)
    r["failures_by_source"] = {k: dict(v) for k, v in all_statuses(r).failures.items()}
    results = {
        "when": started_at.isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "arch": os.uname().machine},
        "rlimit_nofile": {"soft": soft, "hard": hard}, "notes": notes,
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {
            "max_page": MAX_PAGE, "max_script_bytes": MAX_SCRIPT_BYTES,
            "steady_script": STEADY_SCRIPT},
        "statuses": all_statuses(r).as_json(), **r,
    }
    print_phase("baseline", r["baseline"])
    print_phase("abuse", r["abuse"])
    print_gateway(r)
    print_verdict(r)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"abuse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
