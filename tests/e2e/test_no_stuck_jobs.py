"""No job stuck in RUNNING, and a job cannot disturb its executor: a tampered status file, a
stdout turned into a directory or a link, a RUNNING row nobody supervises, a start whose answer
was lost, and a cancel racing an executor's drain."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared.allocation import Allocator
from shared.db.jobs import JobSpec
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore
from tests.e2e.conftest import TERMINAL, Factory, allocated_cpus, submit, wait_state
from tests.helpers import alive_with, allocated_cpus_released

# the script runs as `bash ... $jobdir/script`, however it was started
JOBDIR = 'd=$(dirname "$0")\n'




def test_a_tampered_status_file_ends_the_job_and_frees_its_cpu(start_system: Factory) -> None:
    """The job writes its own status file and kills what started it. A job of its own user's
    (a non-root executor) kills its wrapper: the status file is all that is left, unreadable,
    and the job ends FAILED. A job of another user's (a root executor, as here in CI) cannot
    signal the launcher that started it: its end comes from wait4, not from the file."""
    r = start_system(cpus=2, audit_s=2.0)
    job = submit(r, JOBDIR + 'echo 99999999999 > "$d/status"\n'
                             "if kill -9 $PPID 2>/dev/null; then exec sleep 4242; fi\n"
                             'echo "$PPID is out of reach"\n')
    started = time.monotonic()
    done = wait_state(r, job["id"], TERMINAL, timeout=r.settings.audit_s + 10)
    print(f"ended {done['state']} ({done['reason']}) {time.monotonic() - started:.1f}s later")
    if done["state"] == "COMPLETED":
        assert "out of reach" in r.client.call("GET", f"/api/v1/jobs/{job['id']}/log")
    else:
        assert done["state"] in ("FAILED", "NODE_FAIL") and "status file" in done["reason"]
    assert allocated_cpus(r) == 0
    deadline = time.monotonic() + 5
    while alive_with("sleep 4242"):
        assert time.monotonic() < deadline, "the job's process survived"
        time.sleep(0.1)
    # the executor is fine and keeps running jobs
    assert wait_state(r, submit(r, "echo fine\n")["id"], TERMINAL)["state"] == "COMPLETED"


def test_a_job_that_breaks_its_output_files_does_not_disturb_the_others(
    start_system: Factory, tmp_path: Path
) -> None:
    r = start_system(cpus=4)
    secret = tmp_path / "secret"
    secret.write_text("not-for-the-log\n")
    neighbour = submit(r, "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done\n")
    as_dir = submit(r, JOBDIR + 'echo before\nsleep 1.2\nrm "$d/stdout"; mkdir "$d/stdout"\n'
                               "echo after\nsleep 1.5\n")
    as_link = submit(r, JOBDIR + f'rm "$d/stdout"; ln -s {secret} "$d/stdout"\nsleep 2\n')
    as_fifo = submit(r, JOBDIR + 'rm "$d/stderr"; mkfifo "$d/stderr"\nsleep 2\n')
    for j in (as_dir, as_link, as_fifo):
        assert wait_state(r, j["id"], TERMINAL, 20)["state"] == "COMPLETED"
    done = wait_state(r, neighbour["id"], TERMINAL, 20)
    assert done["state"] == "COMPLETED"
    assert r.client.call("GET", f"/api/v1/jobs/{neighbour['id']}/log") == "".join(
        f"line {i}\n" for i in range(1, 7))
    assert "not-for-the-log" not in r.client.call("GET", f"/api/v1/jobs/{as_link['id']}/log")
    assert "no longer a regular file" in r.client.call("GET",
                                                       f"/api/v1/jobs/{as_dir['id']}/log")
    r.system.check_children()  # every service, the executor included, is still running


async def test_a_running_row_nobody_supervises_is_recovered_by_the_audit(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any
) -> None:
    """PostgreSQL says RUNNING on this worker, the executor has no such process and no job
    directory (a start recorded by an executor that then lost it): within one audit period the
    job ends NODE_FAIL with a reason and its CPU is released."""
    r = await asyncio.to_thread(start_system, cpus=2, audit_s=1.0)
    t = TransitionStore(pool)
    job = await t.insert(JobSpec(script="true", hold=True), idempotency_key=None)
    assert job is not None
    wid = r.settings.worker_id
    # the audit runs every second: it must find the whole state at once, never a RUNNING row
    # whose attempt row or Redis allocation is not there yet (it would end the job and release
    # nothing, and the allocation made after would stay). So Redis first, then the two rows in
    # one transaction.
    placed = await Allocator(redis, keys).allocate(job_id=job.id, attempt=1, cpus=1,
                                                   memory_mb=0, candidates=[wid])
    assert placed.worker_id == wid
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE jobs SET state = 'RUNNING', reason = NULL, worker_id = $2, "
                           "allocated_at = now(), started_at = now() WHERE id = $1", job.id, wid)
        await conn.execute("INSERT INTO attempts (job_id, attempt, worker_id, cpus) "
                           "VALUES ($1, 1, $2, 1)", job.id, wid)
    done = await asyncio.to_thread(wait_state, r, job.id, TERMINAL, 30)
    assert done["state"] == "NODE_FAIL" and "vanished" in done["reason"]
    # within one audit period (plus the audit's own work): measured by PostgreSQL's clock, from
    # the moment the row said RUNNING to its end, not by the test's polling
    took = await pool.fetchval("SELECT extract(epoch FROM finished_at - started_at) "
                               "FROM jobs WHERE id = $1", job.id)
    print(f"audit recovered it in {took:.1f}s")
    assert took <= r.settings.audit_s + 10, took
    assert await allocated_cpus_released(redis, keys) == 0


async def test_a_start_whose_answer_was_lost_still_runs_once(
    start_system: Factory, pool: Any, tmp_path: Path
) -> None:
    r = await asyncio.to_thread(start_system, cpus=2)
    r.system.kill("executor")
    r.system.restart("executor", SCNS_FAILPOINT="executor:start-answer-lost")
    marker = tmp_path / "marker"
    job = await asyncio.to_thread(submit, r, f'echo "$SCNS_ATTEMPT" >> {marker}\n')
    done = await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert (done["state"], done["attempt"]) == ("COMPLETED", 1)
    assert marker.read_text() == "1\n"
    assert "the answer to a start was lost" in r.system.child("executor").log.read_text()


async def test_a_requeue_job_cancelled_while_its_executor_drains_stays_cancelled(
    start_system: Factory, redis: Redis, keys: Keys, pool: Any
) -> None:
    """The executor is stopping (SIGTERM: drain, then NODE_FAIL and requeue for what is still
    running); the job ignores SIGTERM and is cancelled meanwhile. It ends CANCELLED, once: no
    second attempt."""
    r = await asyncio.to_thread(start_system, cpus=2, drain_grace_s=1.0, kill_grace_s=4.0)
    job = await asyncio.to_thread(submit, r, "trap '' TERM\nwhile true; do sleep 0.1; done\n",
                                  requeue=True)
    await asyncio.to_thread(wait_state, r, job["id"], {"RUNNING"})
    executor = r.system.child("executor")
    executor.proc.send_signal(signal.SIGTERM)
    lease = keys.worker_lease(r.settings.worker_id)
    deadline = time.monotonic() + 10
    while await redis.hget(lease, "leaving") != "1":  # it is draining
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    reply = await asyncio.to_thread(r.client.call, "DELETE", f"/api/v1/jobs/{job['id']}")
    assert reply["state"] == "RUNNING" and reply["cancel_requested"]
    await asyncio.to_thread(executor.proc.wait, 30)
    row = await pool.fetchrow("SELECT state, attempt FROM jobs WHERE id = $1", job["id"])
    assert (row["state"], row["attempt"]) == ("CANCELLED", 1)
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE job_id = $1",
                               job["id"]) == 1
