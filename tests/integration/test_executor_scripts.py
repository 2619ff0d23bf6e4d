"""Scripts run the way their author wrote them: through the real wrapper and process layer
(shebang interpreters, CRLF scripts, --output / --error files, --chdir), with their output
shipped to the real Redis and read back as the log API reads it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from redis.asyncio import Redis

from services.executor.environment import base_environment
from services.executor.output import JobOutputShipper
from services.executor.runner import Runner
from services.executor.service import Executor
from shared.db.jobs import ArrayInfo, Job, JobSpec, JobStore
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore
from shared.output import read_output
from shared.settings import Settings
from shared.states import JobState
from tests.helpers import open_epoch, open_for_jobs, wire

pytestmark = pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")


@pytest.fixture(autouse=True)
def _jobs_reach_tmp_path(tmp_path: Path) -> None:
    open_for_jobs(tmp_path)  # an executor running as root runs its jobs as nobody


def job(**kw: Any) -> Job:
    fields: dict[str, Any] = dict(
        id=7, name="t", user="alice", state=JobState.RUNNING, reason=None, priority=0,
        script="echo hi\n", cpus=1, memory_mb=None, time_limit_s=None, env={},
        submit_dir=None, partition=None, requeue=False, dependency=None, attempt=1,
        worker_id="w1", exit_code=None, signal=None, cancel_requested=False,
        submitted_at=datetime.now(UTC), allocated_at=None, started_at=None, finished_at=None)
    fields.update(kw)
    return Job(**fields)


@pytest.fixture
def shipper(redis: Redis, keys: Keys) -> JobOutputShipper:
    return JobOutputShipper(redis, keys, cap_bytes=1 << 20, ttl_s=60)


@pytest.fixture
async def runner(tmp_path: Path, shipper: JobOutputShipper) -> AsyncIterator[Runner]:
    r = Runner(worker_id="w1.cluster", data_dir=tmp_path / "node",
               lifecycle=cast(Any, None), jobs=cast(Any, None), shipper=shipper,
               base_env=base_environment(os.environ), kill_grace_s=1.0)
    yield r
    await r.close()


async def run(runner: Runner, j: Job) -> tuple[int, str | None, dict[str, str]]:
    """Run a job to its end through the process layer; (status, setup error, shipped log)."""
    jobdir = runner.jobdir(j)
    launch = runner.plan(j, jobdir)
    proc = await runner.start_process(j, jobdir, launch)
    tail = runner.tail(j, jobdir, launch)
    status = await asyncio.wait_for(proc.status, 10)
    if proc.error is not None:
        tail.use_job_directory()
    await runner.shipper.ship(tail, final=True)
    log = {}
    for stream in ("stdout", "stderr"):
        text, _, eof = await read_output(runner.shipper.redis, runner.shipper.keys,
                                         job_id=j.id, attempt=j.attempt, stream=stream)
        assert eof
        log[stream] = text
    return status, proc.error, log


async def test_a_python_shebang_runs_under_python(runner: Runner) -> None:
    script = ("#!/usr/bin/env python3\nimport os, sys\nprint('from python', sys.version_info[0])\n"
              "print(os.environ['SLURM_JOB_ID'], file=sys.stderr)\n")
    status, error, log = await run(runner, job(script=script))
    assert (status, error) == (0, None)
    assert log == {"stdout": "from python 3\n", "stderr": "7\n"}
    assert os.stat(runner.jobdir(job()) / "script").st_mode & 0o777 == 0o700


async def test_a_crlf_script_runs_as_if_it_had_lf(runner: Runner) -> None:
    status, _, log = await run(runner, job(id=8, script="x=one\r\necho \"$x\"\r\necho two\r\n"))
    assert status == 0
    assert log["stdout"] == "one\ntwo\n"
    status, _, log = await run(runner, job(id=9, script="#!/bin/sh\r\necho sh-ok\r\n"))
    assert (status, log["stdout"]) == (0, "sh-ok\n")


async def test_no_shebang_runs_under_bash(runner: Runner) -> None:
    status, _, log = await run(runner, job(script='echo "${BASH_VERSION:+bash}"\n'))
    assert (status, log["stdout"]) == (0, "bash\n")


async def test_output_pattern_relative_to_the_workdir(runner: Runner, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    array = ArrayInfo(id=20, spec="0-3", throttle=None, task_count=4, task_min=0, task_max=3,
                      task_step=1)
    j = job(id=23, array_job_id=20, array_task_id=3, array=array, workdir=str(work),
            submit_dir="/nonexistent/submit", stdout_path="out-%j-%a.txt",
            script="pwd\necho \"task $SLURM_ARRAY_TASK_ID of $SCNS_ARRAY_TASK_COUNT\"\n"
                   "echo oops >&2\nprintf 'caf\\303\\251\\n'\n")
    status, error, log = await run(runner, j)
    assert (status, error) == (0, None)
    out = work / "out-23-3.txt"
    content = out.read_bytes()
    assert content == f"{work}\ntask 3 of 4\noops\ncafé\n".encode()
    assert log["stdout"].encode() == content  # the log serves the file's bytes
    assert log["stderr"] == ""  # it went to the same file, shipped once
    jobdir = runner.jobdir(j)
    assert not (jobdir / "stdout").exists() and not (jobdir / "stderr").exists()


async def test_separate_output_and_error_files_append(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "o.txt").write_text("before\n")
    j = job(id=30, submit_dir=str(tmp_path), stdout_path="o.txt", stderr_path="%x-%u.err",
            name="nm", script="echo out\necho err >&2\n")
    status, _, log = await run(runner, j)
    assert status == 0
    assert (tmp_path / "o.txt").read_text() == "before\nout\n"  # appended, like Slurm
    assert (tmp_path / "nm-alice.err").read_text() == "err\n"
    assert log == {"stdout": "before\nout\n", "stderr": "err\n"}


async def test_a_missing_workdir_fails_the_job(runner: Runner, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    status, error, log = await run(runner, job(workdir=str(tmp_path / "missing"),
                                               script=f"touch {marker}\n"))
    assert (status, error) == (1, "workdir")
    assert not marker.exists()
    assert "cannot change to the working directory" in log["stderr"]
    assert str(tmp_path / "missing") in log["stderr"]


async def test_an_output_file_that_cannot_be_opened_fails_the_job(runner: Runner,
                                                                   tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    status, error, log = await run(runner, job(stdout_path=str(tmp_path / "no/such/o.txt"),
                                               script=f"touch {marker}\n"))
    assert (status, error) == (1, "stdout")
    assert not marker.exists()
    assert "cannot open the output file" in log["stderr"]
    assert "Directory nonexistent" in log["stderr"] or "No such file" in log["stderr"]


async def test_a_replaced_output_file_is_not_read_through(runner: Runner, shipper: JobOutputShipper,
                                                          tmp_path: Path) -> None:
    """The job swaps its --output file for a link to a file it should not have shipped."""
    secret = tmp_path / "secret"
    secret.write_text("not yours\n")
    out = tmp_path / "o.txt"
    go = tmp_path / "go"  # the job swaps the file only once the first ship has been seen
    # it waits for the go-file at most ~60 s (then exits 3, failing the test): never forever
    j = job(id=40, stdout_path=str(out),
            script=f"echo first\ni=0\nwhile [ ! -e {go} ]; do\n"
                   f"  i=$((i + 1)); [ $i -le 1200 ] || exit 3; sleep 0.05\ndone\n"
                   f"rm {out}\nln -s {secret} {out}\n")
    jobdir = runner.jobdir(j)
    launch = runner.plan(j, jobdir)
    proc = await runner.start_process(j, jobdir, launch)
    try:
        tail = runner.tail(j, jobdir, launch)
        deadline = time.monotonic() + 30
        while not await shipper.ship(tail):  # pins the file it first reads
            assert time.monotonic() < deadline, "the first output was never shipped"
            await asyncio.sleep(0.05)
        # shipped from the job's own file, before any swap (the job is still waiting)
        text, _, _ = await read_output(shipper.redis, shipper.keys, job_id=40, attempt=1,
                                       stream="stdout")
        assert text == "first\n"
        assert not out.is_symlink() and out.read_text() == "first\n"
    finally:
        go.touch()  # now (and, should the test fail above, anyway) let the job go on and end
    assert await asyncio.wait_for(proc.status, 30) == 0
    await shipper.ship(tail, final=True)
    text, _, _ = await read_output(shipper.redis, shipper.keys, job_id=40, attempt=1,
                                   stream="stdout")
    assert text.startswith("first\n")
    assert "not yours" not in text
    assert "output stops here" in text


# --- through the executor and PostgreSQL -------------------------------------------------------
async def executor(settings: Settings, redis: Redis, pool: asyncpg.Pool[Any],
                   tmp_path: Path) -> Executor:
    s = dataclasses.replace(settings, worker_id="scripts", data_dir=tmp_path / "node",
                            worker_cpus=4, worker_memory_mb=1024)
    ex = Executor(wire(s, redis, pool), dict(os.environ))
    await ex.start()
    return ex


async def launched(ex: Executor, pool: asyncpg.Pool[Any], spec: JobSpec) -> Job:
    t = TransitionStore(pool)
    j = await t.insert(spec, idempotency_key=None)
    assert j is not None
    assert await t.place([(j.id, 1, "scripts")])
    assert await ex.runner.launch(j.id, 1)
    deadline = time.monotonic() + 10
    while j.id in ex.runner.running:
        assert time.monotonic() < deadline, "the job did not end"
        await asyncio.sleep(0.05)
    ended = await JobStore(pool).get(j.id)
    assert ended is not None
    return ended


async def test_executor_runs_output_files_and_fails_a_missing_workdir(
    settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    await open_epoch(redis, keys)
    ex = await executor(settings, redis, pool, tmp_path)
    try:
        done = await launched(ex, pool, JobSpec(
            script="#!/usr/bin/env python3\nprint('py out')\n", submit_dir=str(tmp_path),
            stdout_path="job-%j.out", name="py"))
        assert done.state is JobState.COMPLETED
        content = (tmp_path / f"job-{done.id}.out").read_text()
        assert content == "py out\n"
        text, _, eof = await read_output(redis, keys, job_id=done.id, attempt=1,
                                         stream="stdout")
        assert (text, eof) == (content, True)

        failed = await launched(ex, pool, JobSpec(script="echo never\n",
                                                  workdir=str(tmp_path / "gone")))
        assert failed.state is JobState.FAILED
        assert failed.reason is not None and "working directory" in failed.reason
        text, _, _ = await read_output(redis, keys, job_id=failed.id, attempt=1,
                                       stream="stderr")
        assert "cannot change to the working directory" in text
    finally:
        await ex.runner.close()
        await ex.heartbeat.deregister()
