"""Acceptance: `scns up` as a user runs it, then the CLI against it (a cron schedule
included: its first fire is the first minute boundary after it was made, and makes its job at
once)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from services.cli.up import _pg_dir
from shared.localinfra import free_port
from tests.procs import ROOT

SCNS = [sys.executable, "-m", "services.cli"]


def scns(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCNS, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(UTC)


def _first_scheduled_job(env: dict[str, str], *, deadline: float) -> dict[str, Any]:
    """The job of schedule 1's first run, once it has ended (polled with the CLI)."""
    while True:
        runs = orjson.loads(scns("schedule", "runs", "every-minute", "--json", env=env).stdout)
        if runs["items"]:
            first = runs["items"][-1]  # newest first
            assert first["job_id"] is not None, runs  # no run before it can still be active
            job = orjson.loads(scns("show", str(first["job_id"]), "--json", env=env).stdout)
            if job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                return {**job, "run": first}
        assert time.monotonic() < deadline, f"no job of the schedule ended in time: {runs}"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a start-up, then up to a minute until the schedule's first fire
def test_scns_up_then_submit_wait_queue_show_workers(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SCNS_") or k.startswith("SCNS_TEST_")}
    env.update({"SCNS_DATA_DIR": str(tmp_path / "data"), "SCNS_GATEWAY_PORT": str(port),
                "SCNS_WORKER_ID": "laptop"})
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115
    up = subprocess.Popen([*SCNS, "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Press Ctrl-C to stop" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        text = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}" in text
        assert "scns submit --wait examples/hello.sh" in text

        client_env = {**env, "SCNS_URL": f"http://127.0.0.1:{port}"}
        done = scns("submit", "--wait", "examples/hello.sh", env=client_env)
        assert done.returncode == 0, done.stderr
        assert "Hello from job 1 on laptop with 1 CPU(s)" in done.stdout
        assert "SLURM_JOB_ID=1 SLURM_CPUS_PER_TASK=1" in done.stdout
        assert "COMPLETED" in done.stderr

        # a schedule firing every minute: its first run and job are checked at the end
        cron_script = tmp_path / "cron.sh"
        cron_script.write_text("#!/bin/bash\n#SBATCH -J cron-hello\n#SBATCH -c 1\n"
                               'echo "fired for $SCNS_SCHEDULE_FIRE_TIME"\n')
        added_at = time.monotonic()
        made = scns("schedule", "add", "every-minute", "--cron", "* * * * *", str(cron_script),
                    env=client_env)
        assert made.returncode == 0 and "Created schedule 1 (every-minute)" in made.stdout, \
            made.stderr

        q = scns("queue", "--all", env=client_env)
        assert q.returncode == 0 and "hello" in q.stdout and "COMPLETED" in q.stdout
        s = scns("show", "1", env=client_env)
        assert s.returncode == 0 and "COMPLETED" in s.stdout and "laptop" in s.stdout
        w = scns("workers", env=client_env)
        assert w.returncode == 0 and "laptop" in w.stdout and "ready" in w.stdout
        j = scns("show", "1", "--json", env=client_env)
        assert '"exit_code": 0' in j.stdout

        # the admin token scns up wrote (the CLI above read it from SCNS_DATA_DIR), owner only
        token_file = tmp_path / "data" / "admin.token"
        assert f"admin token in {token_file}" in text
        assert token_file.stat().st_mode & 0o777 == 0o600
        anonymous = {**client_env, "SCNS_DATA_DIR": str(tmp_path / "elsewhere")}
        no_token = scns("queue", env=anonymous)
        assert no_token.returncode == 2 and "401" in no_token.stderr, no_token.stderr
        assert "SCNS_TOKEN" in no_token.stderr
        # a user token made with the CLI: bob sees his own jobs only, and no admin routes
        made = scns("token", "create", "bob", "--expires-in", "1h", env=client_env)
        assert made.returncode == 0 and made.stdout.startswith("scns_"), made.stderr
        bob = {**anonymous, "SCNS_TOKEN": made.stdout.strip()}
        assert "not exist" in scns("show", "1", env=bob).stderr
        assert "hello" not in scns("queue", "--all", env=bob).stdout
        assert "admin" in scns("drain", "laptop", env=bob).stderr
        listed = scns("token", "list", env=client_env)
        assert listed.returncode == 0 and "bob" in listed.stdout and "active" in listed.stdout
        # its first fire comes at most a minute after it was made; then its job runs
        fired = _first_scheduled_job(client_env, deadline=added_at + 60 + 90)
        assert fired["name"] == "cron-hello" and fired["state"] == "COMPLETED", fired
        shown = scns("schedule", "show", "every-minute", "--json", env=client_env)
        assert shown.returncode == 0, shown.stderr
        created = ts(orjson.loads(shown.stdout)["created_at"])  # PostgreSQL's clock
        fire = ts(fired["run"]["fire_at"])
        # the first minute boundary after it was made: the gateway works the next fire time
        # out from its clock a moment before PostgreSQL stamps created_at, whence the margin
        assert (fire.second, fire.microsecond) == (0, 0), fired["run"]
        assert created - timedelta(seconds=5) < fire <= created + timedelta(minutes=1), \
            (fired["run"], created)
        # the job is made at its fire time (not before it), at the cron loop's next tick
        made_after = (ts(fired["submitted_at"]) - fire).total_seconds()
        assert 0 <= made_after <= 30, (fired["run"], fired["submitted_at"])
        logs = scns("logs", str(fired["id"]), env=client_env)
        assert f"fired for {fired['run']['fire_at']}" in logs.stdout, logs
        listed = scns("schedule", "list", env=client_env)
        assert listed.returncode == 0 and "every-minute" in listed.stdout
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 6  # redis, postgres, registry, scheduler, executor, gateway
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(90)
        log.close()
        pg_dir = _pg_dir(tmp_path / "data")
        if not pg_dir.is_relative_to(tmp_path):  # the root fallback outside the test's dir
            shutil.rmtree(pg_dir.parent, ignore_errors=True)
    out = (tmp_path / "up.log").read_text()
    assert code == 0, out
    assert "stopped." in out
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
