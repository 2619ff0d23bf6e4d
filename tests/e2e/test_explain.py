"""The pending explainer against a real system: its start estimate for a job queued behind
jobs of a known time limit, checked against the model it documents (shared/estimate.py: every
job holds its CPUs until its time limit runs out, from when it really started); and the
partition, limit and share commands a person would run."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state

ROOT = Path(__file__).resolve().parents[2]
SCNS = [sys.executable, "-m", "services.cli"]
# every job's time limit (s); none of them reaches it: each ends when the test lets it. Long, so
# that a round counted wrong in the estimate is off by far more than any delay of the system
LIMIT = 120


def scns(r: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCNS, *args], cwd=ROOT, env=r.env, capture_output=True, text=True,
                          timeout=60, check=False)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_the_estimate_books_the_running_jobs_and_those_ahead_by_their_time_limits(
    start_system: Factory, tmp_path: Path
) -> None:
    """Two jobs fill the worker's 2 CPUs and four more wait ahead of ours, all until the test
    creates `go`: while it asks, exactly those are running and ahead. The estimate books them
    by their time limits (the first pair until started_at + LIMIT, the four ahead two by two
    after them), so ours is expected at the first pair's earliest start + 3 x LIMIT."""
    r = start_system(workers=1, cpus=2)
    go = tmp_path / "go"
    held = f"while [ ! -e {go} ]; do sleep 0.05; done\n"
    first = [submit(r, held, time_limit=LIMIT)["id"] for _ in range(2)]
    began = min(ts(wait_state(r, j, {"RUNNING"})["started_at"]) for j in first)
    ahead = [submit(r, held, time_limit=LIMIT)["id"] for _ in range(4)]
    ours = submit(r, "echo started\n", time_limit=LIMIT)["id"]
    # let the first pair run a while by the system's clock (started_at is PostgreSQL's): an
    # estimate that ignored how long they have run would then be off by more than the bound
    while time.time() < began + 2:
        time.sleep(0.05)
    asked = time.time()
    ex = r.client.call("GET", f"/api/v1/jobs/{ours}/explain")
    answered = time.time()
    assert ex["ahead"] == 4, ex
    assert ex["estimated_start_at"] is not None, ex
    estimate = ts(ex["estimated_start_at"])
    # the estimate is the gateway's now plus the booked start, whose time already run is
    # measured with PostgreSQL's now: the two clock reads lie between asking and the answer,
    # and the estimate's own computing time too
    model = began + 3 * LIMIT
    print(f"estimate {estimate - asked:.3f} s from now; the model says {model - asked:.3f} s "
          f"(the request took {answered - asked:.3f} s)")
    assert model - 0.001 <= estimate <= model + 2 * (answered - asked) + 0.001, \
        (estimate, model, asked, answered)

    shown = scns(r, "show", str(ours))  # what a person sees meanwhile
    assert shown.returncode == 0, shown.stderr
    assert "StartTime=" in shown.stdout and "Ahead=4" in shown.stdout, shown.stdout

    go.touch()  # every job ends long before its time limit: ours starts before its estimate
    job = wait_state(r, ours, {"RUNNING", *TERMINAL}, timeout=90)
    assert job["started_at"] is not None, job
    assert ts(job["started_at"]) <= estimate, (job["started_at"], ex["estimated_start_at"])
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
