"""What starting one job costs, by way of starting it (not a test).

    python bench/spawn.py              # 300 jobs each way, one after another
    python bench/spawn.py --jobs 1000

Runs the script `true` N times, one job at a time, and prints the CPU each job cost (ours, in
this process, and the job's processes', from wait4 of every child) and the wall time:

* `bash` alone, posix_spawn'd in a session of its own: the floor of any way of running a
  job's script;
* the shell wrapper (process.py), as the executor starts a job of its own user's, or under
  the subreaper helper;
* as root, the wrapper for a job of another user's (`sh`, `setpriv`, `sh`, `setsid`, `bash`)
  and the launcher (launcher_proc.py: one fork and one exec), each in its own cgroups where
  this machine lets the executor make them.

Prints and writes JSON (bench/results/spawn-<time>.json).
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
import os
import resource
import tempfile
import time
from typing import Any

import orjson

from services.executor import containment
from services.executor.launcher import Launcher
from services.executor.privilege import Account
from services.executor.process import Launch, Wrapper, spawn
from shared.settings import Settings

ENV = {"PATH": "/usr/bin:/bin", "SCNS_JOB_ID": "1", "SCNS_ATTEMPT": "1"}


class Meter:
    """The job processes' CPU (each job's wait4 usage: whoever started it, it waited for them
    all), ours (this process, and the launcher's own where there is one), and the wall time."""

    def __init__(self, launcher_pid: int = 0) -> None:
        self.launcher_pid = launcher_pid
        self.jobs = 0.0
        self.me, self.wall = time.process_time(), time.perf_counter()
        self.launcher0 = _cpu_of(launcher_pid) if launcher_pid else 0.0

    def job(self, ru: resource.struct_rusage | None) -> None:
        if ru is not None:
            self.jobs += ru.ru_utime + ru.ru_stime

    def result(self, n: int) -> dict[str, float]:
        launcher = _cpu_of(self.launcher_pid) - self.launcher0 if self.launcher_pid else 0.0
        return {"job_cpu_ms": round(self.jobs / n * 1000, 3),
                "ours_cpu_ms": round((time.process_time() - self.me + launcher) / n * 1000, 3),
                "wall_ms": round((time.perf_counter() - self.wall) / n * 1000, 3)}


def _cpu_of(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def jobdir(root: Path, i: int, account: Account | None) -> Path:
    d = root / f"{i}.1"
    os.mkdir(d, 0o700)
    (d / "script").write_text("true\n")
    os.chmod(d / "script", 0o700)
    if account is not None:
        (d / "env").write_text("export SCNS_JOB_ID=1 SCNS_ATTEMPT=1\n")
        for f in (d, d / "script", d / "env"):
            os.chown(f, account.uid, account.gid)
    return d


def bash_alone(n: int, root: Path) -> dict[str, float]:
    script = root / "alone"
    script.write_text("true\n")
    m = Meter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/bash", ["bash", "--noprofile", "--norc", "--", str(script)],
                             ENV, setsid=True)
        m.job(os.wait4(pid, 0)[2])
    return m.result(n)


async def through(way: str, n: int, root: Path, iso: containment.Isolation | None
                  ) -> dict[str, float]:
    c = iso.containment if iso else None
    account = iso.users.for_job("bench") if iso else None
    cgroups = tuple(c.entry_dirs()) if c else ()
    wrapper = Wrapper(entry_dirs=cgroups, setpriv=iso.setpriv if iso else None)
    launcher = Launcher() if way == "launcher" else None
    jobs = root / way
    jobs.mkdir()
    os.chmod(jobs, 0o711)
    try:
        if launcher is not None:  # started outside the measure: once per executor
            warm = jobdir(jobs, 0, account)
            sp = await launcher.spawn(warm, dict(ENV), Launch(), account=account,
                                      cgroups=cgroups)
            await sp.status
        m = Meter(launcher.pid if launcher else 0)
        for i in range(1, n + 1):
            d = jobdir(jobs, i, account)
            if c is not None:
                await c.prepare(d.name, memory_mb=None, pids_max=4096)
            if launcher is not None:
                sp = await launcher.spawn(d, dict(ENV), Launch(), account=account,
                                          cgroups=cgroups)
            else:
                sp = await spawn(d, dict(ENV), Launch(), wrapper=wrapper, account=account)
            await sp.status
            m.job(await sp.rusage)
            if c is not None:
                await c.end(d.name)
        return m.result(n)
    finally:
        if launcher is not None:
            await launcher.close()


async def run(n: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="scns-spawn-"))
    os.chmod(root, 0o755)
    out: dict[str, Any] = {"jobs": n, "machine": os.uname().machine, "euid": os.geteuid()}
    out["bash alone"] = bash_alone(n, root)
    out["wrapper, the executor's user"] = await through("wrapper-own", n, root, None)
    if os.geteuid() == 0:
        s = Settings.from_env({})
        iso = containment.prepare(job_containment="auto", job_user=s.job_user,
                                  run_as_submitter=False, jobs_dir=root / "jobs",
                                  data_dir=root, worker_id="spawn-bench", pids_max=4096,
                                  euid=0)
        try:
            out[f"wrapper, another user, {iso.containment.mode}"] = await through(
                "wrapper", n, root, iso)
            out[f"launcher, another user, {iso.containment.mode}"] = await through(
                "launcher", n, root, iso)
        finally:
            iso.containment.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    results = asyncio.run(run(args.jobs))
    for way, r in results.items():
        if isinstance(r, dict):
            print(f"{way:40s} job processes {r['job_cpu_ms']:6.2f} ms CPU   ours "
                  f"{r['ours_cpu_ms']:5.2f} ms CPU   wall {r['wall_ms']:6.2f} ms   per job")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"spawn-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
