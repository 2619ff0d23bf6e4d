"""Acceptance: `scns schedule` against a running system (the real scheduler's cron loop, real
executors): manual runs, the failure streak that disables a schedule, enable, the history and
the 4xx messages, all through the CLI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.conftest import Factory, Running, wait_state
from tests.e2e.test_cli_control import ok, scns

FAR = "0 0 1 1 *"  # fires on New Year only: every run below is a manual one


def show(r: Running, ref: str) -> dict[str, Any]:
    shown: dict[str, Any] = orjson.loads(ok(r, "schedule", "show", ref, "--json"))
    return shown


def triggered(r: Running, ref: str) -> int:
    answer = orjson.loads(ok(r, "schedule", "trigger", ref, "--json"))
    job_id: int = answer["job"]["id"]
    return job_id


def test_schedule_verbs_and_a_failure_streak(start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=2)
    script = tmp_path / "report.sh"
    script.write_text("#!/bin/bash\n#SBATCH -J nightly-report\n#SBATCH -c 2\n"
                      'echo "report for schedule $SCNS_SCHEDULE_NAME"\n')
    out = ok(r, "schedule", "add", "report", "--cron", FAR, "--tz", "Europe/Berlin",
             str(script))
    assert out.startswith("Created schedule ") and "(report): 0 0 1 1 * (Europe/Berlin)" in out

    # a manual run: the job is the script's, with its #SBATCH lines, and belongs to the owner
    first = triggered(r, "report")
    job = wait_state(r, first, {"COMPLETED", "FAILED"})
    assert (job["state"], job["name"], job["cpus"]) == ("COMPLETED", "nightly-report", 2)
    assert job["schedule_id"] == show(r, "report")["id"]
    assert "report for schedule report" in ok(r, "logs", str(first))
    runs = ok(r, "schedule", "runs", "report")
    assert "manual" in runs and str(first) in runs and "COMPLETED" in runs

    # bad input: what is wrong, nothing created
    bad = scns(r, "schedule", "add", "x", "--cron", "61 * * * *", str(script))
    assert bad.returncode != 0 and "minute field '61' is out of range 0-59" in bad.stderr
    bad = scns(r, "schedule", "add", "x", "--cron", "@daily", "--tz", "Europe/Pariss",
               str(script))
    assert bad.returncode != 0 and "did you mean Europe/Paris?" in bad.stderr
    assert "report" in ok(r, "schedule", "list") and " x " not in ok(r, "schedule", "list")

    # two failed runs in a row disable a schedule with max_failures 2; enable resets it
    failing = tmp_path / "fail.sh"
    failing.write_text("#!/bin/bash\nexit 3\n")
    ok(r, "schedule", "add", "flaky", "--cron", FAR, "--max-failures", "2",
       "--concurrency", "allow", str(failing))
    for _ in range(2):
        assert wait_state(r, triggered(r, "flaky"), {"FAILED"})["exit_code"] == 3
    deadline = time.monotonic() + 30  # the scheduler's cron loop settles runs every second
    while show(r, "flaky")["enabled"]:
        assert time.monotonic() < deadline, show(r, "flaky")
        time.sleep(0.2)
    off = show(r, "flaky")
    assert off["consecutive_failures"] == 2 and off["failure_count"] == 2
    assert "2 consecutive failed runs" in off["disabled_reason"]
    assert "disabled" in ok(r, "schedule", "list")
    assert "enabled" in ok(r, "schedule", "enable", "flaky")
    on = show(r, "flaky")
    assert on["enabled"] and on["consecutive_failures"] == 0 and on["disabled_reason"] is None
    assert on["next_run_at"] is not None

    ok(r, "schedule", "rm", "flaky", "report")
    assert scns(r, "schedule", "show", "flaky").returncode != 0
    # the jobs the schedules made are still there
    assert wait_state(r, first, {"COMPLETED"})["schedule_id"] is None
