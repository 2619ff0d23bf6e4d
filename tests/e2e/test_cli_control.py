"""Acceptance: the job-control and accounting verbs of the real `scns` CLI (hold, release,
update, requeue, history, eff, submit's scheduling options) against a running system."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from tests.e2e.conftest import TERMINAL, Factory, Running, wait_state
from tests.procs import ROOT

SCNS = [sys.executable, "-m", "services.cli"]


def scns(r: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCNS, *args], cwd=ROOT, env=r.env, capture_output=True, text=True,
                          timeout=60, check=False)


def ok(r: Running, *args: str) -> str:
    done = scns(r, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def submitted(r: Running, *args: str) -> int:
    m = re.search(r"Submitted batch job (\d+)", ok(r, "submit", *args))
    assert m, args
    return int(m[1])


def test_hold_update_release_requeue_history_eff(start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=4)
    script = tmp_path / "busy.sh"
    script.write_text("#!/bin/bash\n#SBATCH --priority=3\n"
                      "python3 -c 'sum(i * i for i in range(2_000_000))'\necho done\n")
    jid = submitted(r, "--hold", str(script))
    held = r.client.call("GET", f"/api/v1/jobs/{jid}")
    assert (held["state"], held["reason"], held["priority"]) == ("PENDING", "Held", 3)

    assert f"({held['reason']})" in ok(r, "queue")  # NODELIST(REASON)
    out = ok(r, "update", str(jid), "--priority", "5", "--name", "x")
    assert out.strip() == f"job {jid} updated: priority=5 name=x"
    shown = orjson.loads(ok(r, "show", str(jid), "--json"))
    assert (shown["priority"], shown["name"], shown["state"]) == (5, "x", "PENDING")

    assert ok(r, "release", str(jid)).strip() == f"job {jid} released"
    done = wait_state(r, jid, {"COMPLETED", "FAILED"})
    assert done["state"] == "COMPLETED", done

    assert ok(r, "requeue", str(jid)).strip() == f"job {jid} requeued (attempt 2)"
    again = wait_state(r, jid, TERMINAL, attempt=2)
    assert again["state"] == "COMPLETED", again

    page = orjson.loads(ok(r, "history", "--json"))
    assert [j["attempt"] for j in page["items"] if j["id"] == jid] == [2]
    table = ok(r, "history", "-s", "CD", "-n", "x")
    assert re.search(rf"^\s*{jid}\s+x\s+COMPLETED\s+2\s+\d+:\d\d:\d\d\s+1\s+\S*\s*0:0\s+\S+",
                     table, re.MULTILINE), table

    report = ok(r, "eff", str(jid))
    assert "CPU Efficiency" in report and "Attempts: 2" in report, report
    assert "State: COMPLETED (exit code 0)" in report
    assert "Memory Efficiency: n/a (no memory requested)" in report
    figures = orjson.loads(ok(r, "eff", str(jid), "--json"))
    assert (figures["job_id"], figures["attempt"], figures["state"]) == (jid, 2, "COMPLETED")


def test_controls_that_do_not_apply_fail_per_job(start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=4)
    script = tmp_path / "long.sh"
    script.write_text("#!/bin/bash\nsleep 60\n")
    running = submitted(r, str(script))
    later = submitted(r, "--begin", "now+1hour", "--priority", "7", "--retries", "2",
                      "--retry-delay", "5", str(script))
    wait_state(r, running, {"RUNNING"})

    # one job that cannot be held and one that does not exist: both reported, exit 1
    held = scns(r, "hold", str(running), "999999")
    assert held.returncode == 1, held
    assert f"error: job {running} is RUNNING; only a PENDING job can be held" in held.stderr
    assert "error: job 999999 does not exist" in held.stderr
    assert held.stdout == ""

    waiting = orjson.loads(ok(r, "show", str(later), "--json"))
    assert (waiting["state"], waiting["reason"]) == ("PENDING", "BeginTime"), waiting
    assert (waiting["priority"], waiting["retries"], waiting["retry_delay_s"]) == (7, 2, 5)
    assert 3500 < _seconds_from_now(waiting["begin_at"]) <= 3600
    assert ok(r, "hold", str(later)).strip() == f"job {later} held"
    assert scns(r, "update", str(later)).returncode == 2  # nothing to change: usage error

    requeued = ok(r, "requeue", str(running)).strip()
    assert requeued == f"job {running} requeue requested: it is stopped, then runs again"
    ok(r, "cancel", str(later))


def _seconds_from_now(iso: str) -> float:
    from datetime import UTC, datetime

    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - datetime.now(UTC)) \
        .total_seconds()
