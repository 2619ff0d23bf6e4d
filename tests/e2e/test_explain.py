"""The pending explainer against a real system: its start estimate for a job queued behind
fixed-length jobs, compared with when the job really starts; and the partition, limit and
share commands a person would run."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state

ROOT = Path(__file__).resolve().parents[2]
SCNS = [sys.executable, "-m", "services.cli"]
LENGTH = "4.5"  # each job ahead runs this long, under its 5 s limit
LIMIT = 5


def scns(r: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCNS, *args], cwd=ROOT, env=r.env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_estimate_is_within_20_percent_of_the_real_start(start_system: Factory) -> None:
    r = start_system(workers=1, cpus=2)
    first = [submit(r, f"sleep {LENGTH}\n", time_limit=LIMIT)["id"] for _ in range(2)]
    for j in first:
        wait_state(r, j, {"RUNNING"})
    ahead = [submit(r, f"sleep {LENGTH}\n", time_limit=LIMIT)["id"] for _ in range(4)]
    ours = submit(r, "echo started\n", time_limit=LIMIT)["id"]
    time.sleep(0.5)  # a pass has looked at them (reasons set)
    asked = time.time()
    ex = r.client.call("GET", f"/api/v1/jobs/{ours}/explain")
    assert ex["ahead"] == 4, ex
    assert ex["estimated_start_at"] is not None, ex
    estimate = datetime.fromisoformat(ex["estimated_start_at"]).timestamp() - asked

    shown = scns(r, "show", str(ours))  # what a person sees meanwhile
    assert shown.returncode == 0, shown.stderr
    assert "StartTime=" in shown.stdout and "Ahead=4" in shown.stdout, shown.stdout

    job = wait_state(r, ours, {"RUNNING", *TERMINAL}, timeout=90)
    assert job["started_at"] is not None, job
    actual = datetime.fromisoformat(job["started_at"]).timestamp() - asked
    error = abs(estimate - actual) / actual
    print(f"estimate {estimate:.2f} s, actual {actual:.2f} s, error {error:.1%}")
    assert error <= 0.20, (estimate, actual)
    for j in [*first, *ahead]:
        assert wait_state(r, j, {"COMPLETED"}, timeout=30)["state"] == "COMPLETED"


def test_partition_limit_and_share_commands(start_system: Factory) -> None:
    r = start_system(workers=1, cpus=2)
    made = scns(r, "partition", "add", "short", "--max-time", "1:00", "--tier", "1")
    assert made.returncode == 0, made.stderr
    listed = scns(r, "partition", "list")
    assert "short" in listed.stdout and "default*" in listed.stdout, listed.stdout
    refused = scns(r, "submit", "-p", "short", "-t", "5:00", "--wrap", "true")
    assert refused.returncode != 0 and "above its maximum" in refused.stderr, refused
    ok = scns(r, "submit", "-p", "short", "-t", "0:30", "--wrap", "sleep 1", "--wait")
    assert ok.returncode == 0, ok.stderr
    limits = scns(r, "limits", "bob", "--max-running-cpus", "4")
    assert limits.returncode == 0 and "4" in limits.stdout, limits
    busy = submit(r, "sleep 60\n", cpus=2)  # a running user is in the share table at once
    wait_state(r, busy["id"], {"RUNNING"})
    share = scns(r, "share")
    assert share.returncode == 0, share.stderr
    assert busy["user"] in share.stdout and "factor" in share.stderr, share
    workers = scns(r, "workers")
    assert workers.returncode == 0 and "short" in workers.stdout, workers.stdout
    r.client.call("DELETE", f"/api/v1/jobs/{busy['id']}")


def test_jobs_run_only_on_their_partitions_workers(start_system: Factory) -> None:
    """Two executors labelled arm64 and x86_64, a partition over each: every job runs on a
    worker of a partition it named; `arm,x86` runs on either."""
    r = start_system(workers=2, cpus=2, labels=[{"arch": "arm64"}, {"arch": "x86_64"}])
    for name, arch in (("arm", "arm64"), ("x86", "x86_64")):
        r.client.call("POST", "/api/v1/partitions", {"name": name, "selector": {"arch": arch}})
    workers = {w["labels"]["arch"]: w["id"] for w in r.client.call("GET", "/api/v1/workers")
               ["items"]}
    jobs = {p: [submit(r, "sleep 0.2\n", partition=p)["id"] for _ in range(4)]
            for p in ("arm", "x86", "arm,x86")}
    ran = {p: {wait_state(r, j, {"COMPLETED"}, timeout=60)["worker_id"] for j in ids}
           for p, ids in jobs.items()}
    assert ran["arm"] == {workers["arm64"]} and ran["x86"] == {workers["x86_64"]}
    assert ran["arm,x86"] <= {workers["arm64"], workers["x86_64"]}
    listed = scns(r, "workers")
    assert "arm" in listed.stdout and "x86" in listed.stdout, listed.stdout
