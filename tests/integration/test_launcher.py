"""The job launcher (services/executor/launcher*.py) on its own: real processes, no mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from services.executor.launcher import Launcher, is_launcher
from services.executor.process import DEFAULT_LAUNCH, Launch
from shared.jobfiles import read_pids, read_status

ENV = {"PATH": "/usr/bin:/bin", "SCNS_JOB_ID": "1", "SCNS_ATTEMPT": "1"}


def jobdir(tmp_path: Path, name: str, script: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "script").write_text(script)
    (d / "script").chmod(0o700)
    return d


async def start(launcher: Launcher, d: Path, launch: Launch = DEFAULT_LAUNCH) -> tuple[int, int]:
    sp = await launcher.spawn(d, dict(ENV), launch, account=None, cgroups=())
    pid = await asyncio.wait_for(sp.child_pid, 10)
    return pid, await asyncio.wait_for(sp.status, 20)


async def test_a_job_gets_its_own_session_default_signals_and_its_files(tmp_path: Path) -> None:
    launcher = Launcher()
    try:
        d = jobdir(tmp_path, "1.1", "ps -o pid=,pgid=,sid= -p $$\n"
                                    "grep -E '^SigIgn' /proc/$$/status\necho err >&2\nexit 3\n")
        pid, status = await start(launcher, d)
        assert status == 3
        assert read_status(d).value == 3
        assert read_pids(d) == (pid, launcher.pid)
        own, pgid, sid = (d / "stdout").read_text().split()[:3]
        assert own == pgid == sid == str(pid)  # a session and process group of its own
        # what the launcher ignores (TERM, INT, HUP; Python: PIPE, XFSZ) the job does not
        ignored = int((d / "stdout").read_text().split()[-1], 16)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE,
                    signal.SIGXFSZ):
            assert not ignored & (1 << (sig - 1)), sig
        assert (d / "stderr").read_text() == "err\n"
    finally:
        await launcher.close()


async def test_a_signalled_job_reports_128_plus_the_signal(tmp_path: Path) -> None:
    launcher = Launcher()
    try:
        d = jobdir(tmp_path, "2.1", "sleep 30\n")
        sp = await launcher.spawn(d, dict(ENV), Launch(), account=None, cgroups=())
        pid = await asyncio.wait_for(sp.child_pid, 10)
        os.killpg(pid, signal.SIGTERM)
        assert await asyncio.wait_for(sp.status, 20) == 128 + signal.SIGTERM
        ru = await sp.rusage
        assert ru is not None and ru.ru_maxrss > 0
    finally:
        await launcher.close()


async def test_setup_failures_are_reported_before_any_pid(tmp_path: Path) -> None:
    launcher = Launcher()
    try:
        d = jobdir(tmp_path, "3.1", "echo never\n")
        sp = await launcher.spawn(d, dict(ENV), Launch(workdir=str(tmp_path / "gone")),
                                  account=None, cgroups=())
        assert await asyncio.wait_for(sp.status, 10) == 1
        assert sp.error == "workdir" and sp.child_pid.done()
        assert "cannot change to the working directory" in (d / "stderr").read_text()
        assert read_status(d).value == 1 and not (d / "stdout").exists()

        d = jobdir(tmp_path, "4.1", "echo hi\n")
        pid, status = await start(launcher, d, Launch(interpreter="/no/such/interpreter"))
        assert status == 127 and pid > 0
        assert "/no/such/interpreter" in (d / "stderr").read_text()
    finally:
        await launcher.close()


async def test_the_launcher_outlives_its_executor_and_records_the_end(tmp_path: Path) -> None:
    """The executor lets go (or dies) while a job runs: the launcher still records the job's
    status, for the next executor to collect, then exits."""
    launcher = Launcher()
    go = tmp_path / "go-5.1"  # created only after close(): the job is certain to outlive it
    # it waits for the go-file at most ~60 s (then exits 9, failing the test): never forever
    d = jobdir(tmp_path, "5.1", f"i=0\nwhile [ ! -e {go} ]; do\n"
                                f"  i=$((i + 1)); [ $i -le 1200 ] || exit 9; sleep 0.05\ndone\n"
                                "exit 7\n")
    sp = await launcher.spawn(d, dict(ENV), Launch(), account=None, cgroups=())
    pid = launcher.pid
    try:
        child = await asyncio.wait_for(sp.child_pid, 10)  # the job's pid, its process group's
        assert is_launcher(pid)
        await launcher.close()
        assert await asyncio.wait_for(sp.status, 5) == -1  # unknown to this executor now
        assert read_status(d).value is None and is_launcher(pid)  # the job still runs
        go.touch()
        deadline = time.monotonic() + 30
        while read_status(d).value is None:
            assert time.monotonic() < deadline, "the launcher never recorded the status"
            await asyncio.sleep(0.05)
        assert read_status(d).value == 7
        while is_launcher(pid):
            assert time.monotonic() < deadline, "the launcher did not exit after its last job"
            await asyncio.sleep(0.05)
        assert not is_launcher(os.getpid())  # a process that is not a launcher is not one
    finally:
        go.touch()  # should the test fail above: the job ends, and the launcher after it
        await launcher.close()
    # nothing of the test is left running: the job's process group is gone
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(child, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the job outlived the test"
        await asyncio.sleep(0.05)
