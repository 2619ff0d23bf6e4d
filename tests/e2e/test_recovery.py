"""Targeted crash tests: each kills a process at a precise point and checks that nothing is lost,
nothing runs twice and no capacity leaks. Every job appends `job:attempt` to a marker file."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis.asyncio import Redis

from shared.events import decode
from shared.keys import Keys
from tests.e2e.conftest import TERMINAL, Factory, submit, wait_state
from tests.helpers import allocated_cpus_released

# a lost worker's jobs are failed 2 s after its departure: the fence must fit in that
# (shared/fencing.py), so the kill grace and the margin are short too
FAST = {"reconcile_s": 1.0, "repair_grace_s": 1.0, "node_fail_grace_s": 2.0,
        "kill_grace_s": 0.5, "fence_margin_s": 1.0}




async def settled(redis: Redis, keys: Keys, pool: Any) -> None:
    """Capacity accounting is back to zero in both stores."""
    deadline = time.monotonic() + 20
    while True:
        cpus = int(await redis.get(keys.allocated_cpus) or 0)
        rows = await pool.fetchval("SELECT count(*) FROM attempts WHERE released_at IS NULL")
        if cpus == 0 and rows == 0 and await redis.hlen(keys.allocations) == 0:
            return
        assert time.monotonic() < deadline, f"allocated cpus {cpus}, unreleased rows {rows}"
        await asyncio.sleep(0.2)


def marker_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def pid_record(data_dir: Path, attempt_dir: str) -> list[str]:
    """The pids a job's pid file holds, once it is there and complete."""
    for path in data_dir.rglob(f"jobs/{attempt_dir}/pid"):
        text = path.read_text()
        if text.endswith("\n"):
            return text.split()
    return []


def dead(p: psutil.Process) -> bool:
    """Gone, or a zombie: it runs no more code (a recycled pid is another process)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def text_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_started(redis: Redis, keys: Keys, job_id: int, timeout: float = 30) -> None:
    """Until the executor has heard the job's pid (its JobStarted event). RUNNING is recorded
    before the job is spawned; from this event on, the job's pid file names it and whatever
    watches it (its wrapper or the launcher), so an executor killed now leaves a job that a
    restarted one can find."""
    deadline = time.monotonic() + timeout
    while True:
        for _, fields in await redis.xrange(keys.stream("job-started")):
            if getattr(decode(fields["e"]), "job_id", None) == job_id:
                return
        assert time.monotonic() < deadline, f"job {job_id} was never reported started"
        await asyncio.sleep(0.05)


async def wait_log(path: Path, text: str, timeout: float = 30) -> None:
    """Until a service's log contains `text`."""
    deadline = time.monotonic() + timeout
    while text not in text_of(path):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("point", ["scheduler:after-pg-write", "scheduler:after-lua"])
async def test_scheduler_killed_between_its_steps(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path, point: str
) -> None:
    r = await asyncio.to_thread(start_system, cpus=4, **FAST)
    r.system.kill("scheduler")
    r.system.restart("scheduler", SCNS_FAILPOINT=point)
    marker = tmp_path / "marker"
    job = await asyncio.to_thread(submit, r, f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\n')
    # the scheduler dies at the failpoint, having done half of the placement
    await asyncio.to_thread(r.system.child("scheduler").proc.wait, 30)
    assert r.system.child("scheduler").proc.returncode == -signal.SIGKILL
    row = await pool.fetchrow("SELECT state FROM jobs WHERE id = $1", job["id"])
    assert row["state"] == "ALLOCATED"
    has_record = await redis.hexists(keys.allocations, str(job["id"]))
    assert has_record == (point == "scheduler:after-lua")
    # no scheduler is running now: the reconciler alone must finish the placement
    done = await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert done["state"] == "COMPLETED"
    assert marker_lines(marker) == [f"{job['id']}:1"]
    r.system.restart("scheduler")
    await settled(redis, keys, pool)


async def test_executor_killed_while_a_job_runs_readopts_it(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path
) -> None:
    r = await asyncio.to_thread(start_system, cpus=4, **FAST)
    marker = tmp_path / "marker"
    go = tmp_path / "go"
    # the job runs until the test lets it end: the restarted executor surely finds it running
    # (adopted), never already ended (which would be collected)
    job = await asyncio.to_thread(
        submit, r, f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\necho before\n'
                   f'while [ ! -e "{go}" ]; do sleep 0.05; done\necho after\n')
    await wait_started(redis, keys, job["id"])
    r.system.kill("executor")  # SIGKILL: no drain, no goodbye
    await asyncio.sleep(0.5)
    r.system.restart("executor")
    await wait_log(r.system.child("executor").log, "adopted")
    go.touch()
    done = await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert (done["state"], done["exit_code"], done["attempt"]) == ("COMPLETED", 0, 1)
    assert marker_lines(marker) == [f"{job['id']}:1"]
    out = r.client.call("GET", f"/api/v1/jobs/{job['id']}/log")
    assert out == "before\nafter\n"
    await settled(redis, keys, pool)


async def test_executor_down_past_the_jobs_end_recovers_its_status(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path
) -> None:
    r = await asyncio.to_thread(start_system, cpus=4, **FAST)
    job = await asyncio.to_thread(submit, r, "sleep 1\necho bye >&2\nexit 7\n")
    await wait_started(redis, keys, job["id"])
    r.system.kill("executor")
    await asyncio.sleep(2.5)  # the job ends while no executor watches
    r.system.restart("executor")
    done = await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert (done["state"], done["exit_code"]) == ("FAILED", 7)
    assert r.client.call("GET", f"/api/v1/jobs/{job['id']}/log",
                         query={"stream": "stderr"}) == "bye\n"
    await settled(redis, keys, pool)


async def test_a_job_that_vanished_with_its_executor_is_node_fail_then_requeued(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path
) -> None:
    import os

    r = await asyncio.to_thread(start_system, cpus=4, **FAST)
    marker = tmp_path / "marker"
    job = await asyncio.to_thread(
        submit, r, f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\nsleep 30\n', requeue=True)
    running = await asyncio.to_thread(wait_state, r, job["id"], {"RUNNING"})
    # RUNNING is recorded before the executor makes the job's directory and starts it; its pid
    # file comes a moment later (after its cgroup entry and the switch to the job's user)
    deadline = time.monotonic() + 30
    while len(pids := pid_record(r.settings.data_dir, f"{job['id']}.1")) < 2:
        assert time.monotonic() < deadline, "the wrapper never wrote its pid file"
        await asyncio.sleep(0.05)
    # and the pid file can come before the script's first line: attempt 1 surely wrote its own
    # before it is killed
    while not marker_lines(marker):
        assert time.monotonic() < deadline, "attempt 1 never wrote its line"
        await asyncio.sleep(0.05)
    child, wrapper = (int(x) for x in pids)
    watcher = psutil.Process(wrapper)  # the job's wrapper, or the launcher that started it
    r.system.kill("executor")
    # the node "lost" the job: no process, no status. What watches the job dies first, and for
    # certain, before the job: killed after it, it could still record the job's end (a status
    # the restarted executor would collect, instead of finding the job lost)
    os.kill(wrapper, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not dead(watcher):
        assert time.monotonic() < deadline, "the job's wrapper survived SIGKILL"
        await asyncio.sleep(0.01)
    os.killpg(child, signal.SIGKILL)
    r.system.restart("executor")
    deadline = time.monotonic() + 30
    while (second := r.client.call("GET", f"/api/v1/jobs/{job['id']}"))["attempt"] < 2 \
            or second["state"] != "RUNNING":
        assert time.monotonic() < deadline, second
        await asyncio.sleep(0.1)
    first = await pool.fetchrow("SELECT * FROM attempts WHERE job_id = $1 AND attempt = 1",
                                job["id"])
    assert first["released_at"] is not None
    # RUNNING is recorded before the wrapper starts: attempt 2's line comes a moment later
    deadline = time.monotonic() + 30
    while len(marker_lines(marker)) < 2:
        assert time.monotonic() < deadline, marker_lines(marker)
        await asyncio.sleep(0.05)
    assert marker_lines(marker) == [f"{job['id']}:1", f"{job['id']}:2"]
    assert running["attempt"] == 1
    r.client.call("DELETE", f"/api/v1/jobs/{job['id']}")
    await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert marker_lines(marker) == [f"{job['id']}:1", f"{job['id']}:2"]  # and no third run
    await settled(redis, keys, pool)


async def test_redis_flushed_mid_run(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any, tmp_path: Path
) -> None:
    """Everything under the prefix (and our arq keys) vanishes while jobs run and wait."""
    r = await asyncio.to_thread(start_system, workers=2, cpus=2, **FAST)
    marker = tmp_path / "marker"
    script = f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\nsleep 2\n'
    ids = [(await asyncio.to_thread(submit, r, script))["id"] for _ in range(10)]
    await asyncio.to_thread(wait_state, r, ids[0], {"RUNNING"})
    victims = [k async for k in redis.scan_iter(match=keys.pattern(), count=1000)]
    victims += [k async for k in redis.scan_iter(match=f"arq:*{keys.prefix}*", count=1000)]
    await redis.delete(*victims)
    print(f"deleted {len(victims)} keys")
    for job_id in ids:
        done = await asyncio.to_thread(wait_state, r, job_id, TERMINAL, 90)
        assert done["state"] == "COMPLETED", done
    lines = marker_lines(marker)
    assert sorted(lines) == sorted(f"{i}:1" for i in ids)  # each ran once
    assert await redis.exists(keys.alloc_epoch)
    await settled(redis, keys, pool)
    workers = r.client.call("GET", "/api/v1/workers")["items"]
    assert sorted((w["id"], w["state"]) for w in workers) == [
        ("test-worker-1", "ready"), ("test-worker-2", "ready")]


async def test_a_quiet_consistent_system_is_left_untouched_by_a_reconcile(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any
) -> None:
    r = await asyncio.to_thread(start_system, cpus=4, reconcile_s=3600.0)
    job = await asyncio.to_thread(submit, r, "sleep 30\n")
    await asyncio.to_thread(wait_state, r, job["id"], {"RUNNING"})
    await asyncio.to_thread(submit, r, "sleep 30\n", cpus=4)  # PENDING: no room
    report = r.client.call("POST", "/api/v1/admin/reconcile")
    assert sum(v for k, v in report.items() if isinstance(v, int) and k != "at") == 0, report
    r.client.call("DELETE", f"/api/v1/jobs/{job['id']}")
    await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)


@pytest.mark.slow
async def test_postgresql_stopped_mid_run(
    start_system: Factory, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    """A private PostgreSQL is stopped for a few seconds while jobs run: writes get a clear 503,
    reads Redis can serve still work, running jobs keep running and their ends are recorded
    when PostgreSQL is back; nothing is lost or run twice."""
    import os
    import shutil
    import tempfile

    import asyncpg

    from services.cli.client import ApiError
    from shared.db.migrate import migrate
    from shared.localinfra import start_postgres

    base = Path(tempfile.mkdtemp(prefix="scns-pg-"))
    os.chmod(base, 0o755)  # PostgreSQL runs as another user when we are root
    pg = await asyncio.to_thread(start_postgres, base / "pg", durable=False)
    port = int(pg.url.rsplit(":", 1)[1].split("/")[0])
    try:
        url = pg.url.rsplit("/", 1)[0] + "/postgres"
        await migrate(url)
        r = await asyncio.to_thread(start_system, cpus=4, database_url=url, **FAST)
        marker = tmp_path / "marker"
        script = f'echo "$SCNS_JOB_ID:$SCNS_ATTEMPT" >> {marker}\nsleep 3\n'
        ids = [(await asyncio.to_thread(submit, r, script, cpus=2))["id"] for _ in range(6)]
        await asyncio.to_thread(wait_state, r, ids[0], {"RUNNING"})
        await asyncio.to_thread(pg.stop)
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(submit, r, "true\n")
        assert refused.value.status == 503 and "database is unavailable" in str(refused.value)
        resources = r.client.call("GET", "/api/v1/resources")
        assert resources["total_cpus"] == 4
        workers = r.client.call("GET", "/api/v1/workers")
        assert workers["degraded"] is True and workers["items"][0]["state"] == "ready"
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - started)))  # jobs end meanwhile
        pg = await asyncio.to_thread(start_postgres, base / "pg", port=port, durable=False)
        for job_id in ids:
            done = await asyncio.to_thread(wait_state, r, job_id, TERMINAL, 90)
            assert done["state"] == "COMPLETED", done
        assert sorted(marker_lines(marker)) == sorted(f"{i}:1" for i in ids)
        conn = await asyncpg.connect(url)
        try:
            deadline = time.monotonic() + 20
            while await conn.fetchval(
                    "SELECT count(*) FROM attempts WHERE released_at IS NULL"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        assert await allocated_cpus_released(redis, keys) == 0
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(base, ignore_errors=True)
