"""Acceptance of the job lifecycle through the real processes and the HTTP API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis.asyncio import Redis

from shared.events import decode
from shared.keys import Keys
from tests.e2e.conftest import (
    TERMINAL,
    Factory,
    Running,
    allocated_cpus,
    submit,
    wait_state,
)
from tests.helpers import allocated_cpus_released
from tests.procs import ROOT


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group. A zombie has exited; reaping it is the
    job of whoever inherited it (init here, tini in our image)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return out


def job_pgid(r: Running, job: dict[str, Any], timeout: float = 30) -> int:
    """The job's process group: the first pid of its pid file (written a moment after RUNNING
    is recorded, and read only once complete)."""
    deadline = time.monotonic() + timeout
    while True:
        for path in r.settings.data_dir.rglob(f"jobs/{job['id']}.{job['attempt']}/pid"):
            text = path.read_text()
            if text.endswith("\n"):
                return int(text.split()[0])
        assert time.monotonic() < deadline, f"job {job['id']} has no pid file"
        time.sleep(0.05)


def read_record(path: Path, timeout: float = 30) -> list[int]:
    """The numbers a job writes on one line to `path`, once the line is complete."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and (text := path.read_text()).endswith("\n")):
        assert time.monotonic() < deadline, f"the job never wrote {path}"
        time.sleep(0.05)
    return [int(x) for x in text.split()]


def live_in_group(pid: int, pgid: int) -> bool:
    """Is `pid` a live (non-zombie) process of process group `pgid`? (A recycled pid is in
    another group.)"""
    try:
        return (psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                and os.getpgid(pid) == pgid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


# Long enough that a job surely runs its first lines (the record below, a trap) before its time
# limit, even on a loaded machine: what these tests check happens after the limit.
LIMIT_S = 5


def test_time_limit_kills_the_whole_group(start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=4)
    record = tmp_path / "background"
    # the job records its background child, and the process group that child is in, while the
    # child surely runs (nothing but the time limit stops it)
    job = submit(r, f'sleep 600 &\necho "$! $(ps -o pgid= -p $!)" > {record}\nsleep 600\n',
                 time_limit=LIMIT_S)
    running = wait_state(r, job["id"], {"RUNNING"})
    pgid = job_pgid(r, running)
    background, its_group = read_record(record)
    assert its_group == pgid, "the background child ran in the job's process group"
    done = wait_state(r, job["id"], TERMINAL, timeout=LIMIT_S + r.settings.kill_grace_s + 30)
    assert done["state"] == "TIMEOUT"
    ran = (_ts(done["finished_at"]) - _ts(done["started_at"]))
    # an upper bound that only a time limit (or grace) not enforced can exceed
    assert ran <= LIMIT_S + r.settings.kill_grace_s + 10, ran
    assert not live_in_group(background, pgid), "the background child survived"
    assert group_processes(pgid) == []


def test_a_script_that_traps_sigterm_is_killed_after_the_grace(start_system: Factory) -> None:
    r = start_system(cpus=4)
    job = submit(r, "trap 'echo got TERM' TERM\nwhile true; do sleep 0.1; done\n",
                 time_limit=LIMIT_S)
    running = wait_state(r, job["id"], {"RUNNING"})
    pgid = job_pgid(r, running)
    done = wait_state(r, job["id"], TERMINAL, timeout=LIMIT_S + r.settings.kill_grace_s + 30)
    assert done["state"] == "TIMEOUT"
    assert done["signal"] == 9  # SIGKILLed after the grace period
    ran = _ts(done["finished_at"]) - _ts(done["started_at"])
    # started_at is recorded before the job is spawned, the SIGTERM comes after it and the
    # SIGKILL a grace later: the lower bound is certain; the upper one only fails if the grace
    # is not enforced
    assert r.settings.kill_grace_s <= ran <= LIMIT_S + r.settings.kill_grace_s + 10, ran
    assert group_processes(pgid) == []
    assert "got TERM" in r.client.call("GET", f"/api/v1/jobs/{job['id']}/log")


def test_cancel_running_and_pending(start_system: Factory) -> None:
    r = start_system(cpus=2)
    running_job = submit(r, "sleep 600\n", cpus=2)
    running = wait_state(r, running_job["id"], {"RUNNING"})
    pgid = job_pgid(r, running)
    pending = submit(r, "echo never\n", cpus=2)  # no room left: stays PENDING
    assert wait_state(r, pending["id"], {"PENDING"})["state"] == "PENDING"

    cancelled = r.client.call("DELETE", f"/api/v1/jobs/{pending['id']}")
    assert cancelled["state"] == "CANCELLED"  # at once, in the response itself

    reply = r.client.call("DELETE", f"/api/v1/jobs/{running_job['id']}")
    assert reply["state"] == "RUNNING" and reply["cancel_requested"] is True
    done = wait_state(r, running_job["id"], TERMINAL, timeout=r.settings.kill_grace_s + 30)
    assert done["state"] == "CANCELLED"
    assert group_processes(pgid) == []
    assert r.client.call("GET", f"/api/v1/jobs/{pending['id']}")["started_at"] is None
    assert allocated_cpus(r) == 0


def test_exit_3_is_failed_and_output_is_retrievable(start_system: Factory) -> None:
    r = start_system()
    job = submit(r, "echo to-stdout\necho to-stderr >&2\nexit 3\n")
    done = wait_state(r, job["id"], TERMINAL)
    assert (done["state"], done["exit_code"], done["signal"]) == ("FAILED", 3, None)
    env = {**r.env}
    out = subprocess.run([sys.executable, "-m", "services.cli", "logs", str(job["id"])],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    err = subprocess.run([sys.executable, "-m", "services.cli", "logs", "-e", str(job["id"])],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "to-stdout\n"
    assert err.stdout == "to-stderr\n"


async def test_the_streams_tell_one_jobs_story_in_order(
    start_system: Factory, redis: Redis, keys: Keys
) -> None:
    r = await asyncio.to_thread(start_system, workers=2, cpus=2)
    job = await asyncio.to_thread(submit, r, "echo story\n")
    await asyncio.to_thread(wait_state, r, job["id"], TERMINAL)
    timeline = []
    for t in ("job-submitted", "job-allocated", "job-started", "job-finished"):
        for entry_id, fields in await redis.xrange(keys.stream(t)):
            e = decode(fields["e"])
            if getattr(e, "job_id", None) == job["id"]:
                timeline.append((entry_id, t, e))
    timeline.sort(key=lambda x: tuple(int(p) for p in x[0].split("-")))
    story = [t for _, t, _ in timeline]
    # a placement dispatches the launch before it announces job-allocated (ARCHITECTURE.md:
    # PostgreSQL -> Redis -> dispatch -> event), so a quick executor may announce job-started
    # first: those two in either order, between the submit and the end
    assert story[0] == "job-submitted" and story[-1] == "job-finished", story
    assert sorted(story[1:3]) == ["job-allocated", "job-started"], story
    assert {e.job_id for _, _, e in timeline} == {job["id"]}
    joined = [decode(f["e"]) for _, f in await redis.xrange(keys.stream("worker-joined"))]
    assert sorted(e.worker_id for e in joined) == ["test-worker-1", "test-worker-2"]


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_500_mixed_jobs_on_two_16_cpu_workers(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any
) -> None:
    """All reach COMPLETED; sampled continuously, no worker is ever over its capacity; at the
    end Redis says 0 allocated and PostgreSQL agrees."""
    import random

    r = await asyncio.to_thread(start_system, workers=2, cpus=16)
    rng = random.Random(500)
    # short jobs: what is tested is placement under churn, not how long jobs sleep
    specs = [{"script": f"sleep {rng.choice(['0', '0.1', '0.2', '0.3', '0.5'])}\n",
              "cpus": rng.randint(1, 16)} for _ in range(500)]
    workers = ["test-worker-1", "test-worker-2"]
    samples = 0
    worst = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal samples, worst
        while not stop.is_set():
            values = [await redis.hget(keys.worker_alloc(w), "cpus") for w in workers]
            for v in values:
                worst = max(worst, int(v or 0))
                assert int(v or 0) <= 16, f"over-committed: {values}"
            samples += 1
            await asyncio.sleep(0.01)

    started = time.monotonic()
    sampler = asyncio.create_task(sample())
    ids = []
    for spec in specs:
        ids.append((await asyncio.to_thread(r.client.call, "POST", "/api/v1/jobs", spec))["id"])
    deadline = time.monotonic() + 600
    while True:
        n = await pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'COMPLETED'")
        if n == 500:
            break
        bad = await pool.fetchval("SELECT count(*) FROM jobs WHERE state IN "
                                  "('FAILED','CANCELLED','TIMEOUT','NODE_FAIL')")
        assert bad == 0
        assert time.monotonic() < deadline, f"only {n} of 500 completed"
        await asyncio.sleep(0.5)
    stop.set()
    await sampler
    print(f"500 jobs completed in {time.monotonic() - started:.1f}s; {samples} samples, "
          f"peak allocation {worst}/16 CPUs")
    assert samples > 100
    assert await allocated_cpus_released(redis, keys) == 0
    for w in workers:
        assert int(await redis.hget(keys.worker_alloc(w), "cpus") or 0) == 0
    assert await redis.hlen(keys.allocations) == 0
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE released_at IS NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM attempts") == 500
