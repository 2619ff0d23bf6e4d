"""Job control as Slurm users work, through the real processes and the HTTP API: hold and
release, update, requeue (of a finished and of a running job), retries with doubling delays,
begin times, priority order, and per-attempt accounting."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.cli.client import ApiError
from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state
from tests.procs import ROOT


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def attempts(r: Running, job_id: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = r.client.call("GET", f"/api/v1/jobs/{job_id}/attempts")["items"]
    return items


def api_error(r: Running, method: str, path: str, body: Any = None) -> ApiError:
    with pytest.raises(ApiError) as e:
        r.client.call(method, path, body)
    return e.value


def test_hold_release_and_update(start_system: Factory) -> None:
    r = start_system(cpus=2)
    held = submit(r, "echo released\n", hold=True)
    # held for 5 s: it stays PENDING with reason Held however often the scheduler passes
    until = time.monotonic() + 5
    while time.monotonic() < until:
        job = r.client.call("GET", f"/api/v1/jobs/{held['id']}")
        assert (job["state"], job["reason"]) == ("PENDING", "Held")
        time.sleep(0.25)
    # a held job can be updated (scontrol update), and shows it
    changed = r.client.call("PATCH", f"/api/v1/jobs/{held['id']}",
                            {"priority": 7, "time_limit": 90, "cpus": 2, "name": "renamed"})
    assert changed["reason"] == "Held"
    shown = r.client.call("GET", f"/api/v1/jobs/{held['id']}")
    assert (shown["priority"], shown["time_limit"], shown["cpus"], shown["name"]) == \
        (7, 90, 2, "renamed")
    r.client.call("POST", f"/api/v1/jobs/{held['id']}/release")
    done = wait_state(r, held["id"], TERMINAL)
    assert done["state"] == "COMPLETED" and done["cpus"] == 2
    assert r.client.call("GET", f"/api/v1/jobs/{held['id']}/log") == "released\n"

    busy = submit(r, "sleep 60\n")
    wait_state(r, busy["id"], {"RUNNING"})
    e = api_error(r, "POST", f"/api/v1/jobs/{busy['id']}/hold")
    assert e.status == 409
    assert f"job {busy['id']} is RUNNING; only a PENDING job can be held" in str(e)
    e = api_error(r, "PATCH", f"/api/v1/jobs/{busy['id']}", {"cpus": 1})
    assert e.status == 409 and "only a PENDING job can be updated" in str(e)
    r.client.call("DELETE", f"/api/v1/jobs/{busy['id']}")
    assert wait_state(r, busy["id"], TERMINAL, 20)["state"] == "CANCELLED"


BUSY_TWO_CPUS = """\
for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done
wait
times
"""


def test_requeue_and_accounting(start_system: Factory) -> None:
    r = start_system(cpus=4)
    # the script itself holds 120 MB for a moment: its peak RSS must show it
    job = submit(r, 'echo "attempt $SCNS_ATTEMPT restart $SLURM_RESTART_COUNT"\n'
                    "big=$(head -c 120000000 /dev/zero | tr '\\0' x); big=\n")
    assert wait_state(r, job["id"], TERMINAL)["state"] == "COMPLETED"
    again = r.client.call("POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert (again["state"], again["attempt"]) == ("PENDING", 2)
    done = wait_state(r, job["id"], TERMINAL, attempt=2)
    assert done["state"] == "COMPLETED" and done["exit_code"] == 0
    assert r.client.call("GET", f"/api/v1/jobs/{job['id']}/log") == "attempt 2 restart 1\n"
    items = attempts(r, job["id"])
    assert [(a["attempt"], a["state"], a["exit_code"], a["worker_id"]) for a in items] == [
        (1, "COMPLETED", 0, r.settings.worker_id), (2, "COMPLETED", 0, r.settings.worker_id)]
    for a in items:
        assert ts(a["allocated_at"]) <= ts(a["started_at"]) <= ts(a["finished_at"])
        assert (a["peak_rss_kb"] or 0) >= 120_000, a
        assert a["cpu_s"] is not None and a["cpu_s"] >= 0, a
    assert ts(items[0]["finished_at"]) <= ts(items[1]["allocated_at"])

    # CPU efficiency of a job keeping 2 CPUs busy for 3 s, against what bash itself counted
    eff = submit(r, BUSY_TWO_CPUS, cpus=2)
    assert wait_state(r, eff["id"], TERMINAL, 30)["state"] == "COMPLETED"
    lines = r.client.call("GET", f"/api/v1/jobs/{eff['id']}/log").split("\n")
    truth = sum(_seconds(x) for x in lines[1].split())  # `times`: children's user, system
    [a] = attempts(r, eff["id"])
    seff = subprocess.run([sys.executable, "-m", "services.cli", "eff", str(eff["id"]),
                           "--json"], cwd=ROOT, env=r.env, capture_output=True, text=True,
                          check=True)
    ours = orjson.loads(seff.stdout)["cpu_efficiency"]
    true_eff = truth / (2 * a["elapsed_s"])
    print(f"scns eff: CPU efficiency {ours:.1%}; by bash's own count {true_eff:.1%} "
          f"({a['cpu_s']:.2f} vs {truth:.2f} CPU s in {a['elapsed_s']:.2f} s)")
    assert abs(ours - true_eff) <= 0.2 * true_eff
    # the loops really ran (how much CPU they got depends on the machine's load: only that
    # they got some is certain)
    assert truth > 0.1


TWO_HOLDERS = """\
for i in 1 2; do
  bash -c 'x=$(head -c 40000000 /dev/zero | tr "\\0" x); sleep 3
           grep VmRSS /proc/$$/status; true' &
done
wait
"""


def test_peak_rss_adds_up_the_processes_of_a_job(start_system: Factory) -> None:
    """Two processes holding 40 MB or more each at the same time: the job's peak is their sum
    (from the samples of its process group), not the largest one alone."""
    r = start_system(cpus=2)
    job = submit(r, TWO_HOLDERS)
    assert wait_state(r, job["id"], TERMINAL, 30)["state"] == "COMPLETED"
    held = [int(line.split()[1]) for line in
            r.client.call("GET", f"/api/v1/jobs/{job['id']}/log").splitlines()]
    [a] = attempts(r, job["id"])
    print(f"peak RSS {a['peak_rss_kb']} kB; the two processes held {held} kB at once")
    assert len(held) == 2 and min(held) >= 40_000
    assert a["peak_rss_kb"] >= 0.9 * sum(held)


def _seconds(text: str) -> float:
    minutes, _, rest = text.partition("m")
    return int(minutes) * 60 + float(rest.rstrip("s"))


def test_requeue_of_a_running_job_stops_it_then_runs_it_again(
    start_system: Factory, tmp_path: Path
) -> None:
    r = start_system(cpus=2)
    pidfile = tmp_path / "pid"
    job = submit(r, f'if [ "$SCNS_ATTEMPT" = 1 ]; then trap "" TERM; echo $$ > {pidfile}; '
                    "sleep 600; fi\necho done $SCNS_ATTEMPT\n")
    wait_state(r, job["id"], {"RUNNING"})
    # RUNNING is recorded before the script runs: the requeue must find SIGTERM ignored (the
    # pid file is written after the trap), or the job would die of it instead of SIGKILL
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the job's first line never ran"
        time.sleep(0.05)
    reply = r.client.call("POST", f"/api/v1/jobs/{job['id']}/requeue")
    assert reply["state"] == "RUNNING" and reply["requeue_requested"] is True
    done = wait_state(r, job["id"], TERMINAL, r.settings.kill_grace_s + 20, attempt=2)
    assert done["state"] == "COMPLETED"
    first, second = attempts(r, job["id"])
    assert (first["state"], first["reason"], first["signal"]) == \
        ("CANCELLED", "requeue requested", 9)  # it ignored SIGTERM: SIGKILL after the grace
    assert second["state"] == "COMPLETED"
    assert r.client.call("GET", f"/api/v1/jobs/{job['id']}/log") == "done 2\n"


def test_retries_with_doubling_delays(start_system: Factory) -> None:
    r = start_system(cpus=2)
    flaky = submit(r, '[ "$SCNS_ATTEMPT" -ge 2 ] || exit 3\necho "ok $SLURM_RESTART_COUNT"\n',
                   retries=2, retry_delay_s=1)
    broken = submit(r, "exit 4\n", retries=2, retry_delay_s=1)
    done = wait_state(r, flaky["id"], TERMINAL, attempt=2)
    assert (done["state"], done["retries_used"]) == ("COMPLETED", 1)
    assert r.client.call("GET", f"/api/v1/jobs/{flaky['id']}/log") == "ok 1\n"
    one, two = attempts(r, flaky["id"])
    assert (one["state"], one["exit_code"], two["state"]) == ("FAILED", 3, "COMPLETED")
    assert ts(two["started_at"]) - ts(one["finished_at"]) >= 1.0

    final = wait_state(r, broken["id"], TERMINAL, 40, attempt=3)
    assert (final["state"], final["exit_code"]) == ("FAILED", 4)
    items = attempts(r, broken["id"])
    assert [a["state"] for a in items] == ["FAILED"] * 3
    delays = [ts(b["started_at"]) - ts(a["finished_at"]) for a, b in itertools.pairwise(items)]
    print(f"observed retry delays {[round(d, 3) for d in delays]} (configured 1 s, 2 s)")
    assert delays[0] >= 1.0 and delays[1] >= 2.0


# the scheduler's safety-net pass, far apart in test_begin_time: a job that starts within
# BEGIN_LATE_S of its begin time was started by the begin-time timer, not by the next pass
BEGIN_INTERVAL_S = 60.0
BEGIN_LATE_S = 30.0


def test_begin_time(start_system: Factory) -> None:
    r = start_system(cpus=2, scheduler_interval_s=BEGIN_INTERVAL_S)
    job = submit(r, "echo began\n",
                 begin_at=(datetime.now(UTC) + timedelta(seconds=5)).isoformat())
    assert job["reason"] == "BeginTime"
    begin = ts(job["begin_at"])  # as the system recorded it
    # an answer received before the begin time was read before it: the job is still waiting
    # (the begin time is compared with PostgreSQL's clock, the one this host's answers use)
    while time.time() < begin:
        shown = r.client.call("GET", f"/api/v1/jobs/{job['id']}")
        if time.time() < begin:
            assert (shown["state"], shown["reason"]) == ("PENDING", "BeginTime"), shown
        time.sleep(0.1)
    done = wait_state(r, job["id"], TERMINAL, BEGIN_INTERVAL_S)
    assert done["state"] == "COMPLETED"
    [a] = attempts(r, job["id"])
    placed, late = ts(a["allocated_at"]) - begin, ts(done["started_at"]) - begin
    print(f"placed {placed * 1000:.0f} ms and started {late * 1000:.0f} ms after its begin time")
    # never placed before its begin time (PostgreSQL stamps both), started once placed, and
    # well before the next safety-net pass could have placed it
    assert 0 <= placed <= late <= BEGIN_LATE_S, (a, done)


def test_priority_then_submit_order(start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=1)
    go, order = tmp_path / "go", tmp_path / "order"
    blocker = submit(r, f"while [ ! -e {go} ]; do sleep 0.05; done\n")
    wait_state(r, blocker["id"], {"RUNNING"})
    priorities = [5, 80, 5, 30, 0, 100, 30, 80, 1, 5, 0, 100, 50, 30, 2, 80, 5, 0, 50, 1]
    ids = [submit(r, f"echo $SCNS_JOB_ID >> {order}\n", priority=p)["id"] for p in priorities]
    for job_id in ids:
        assert r.client.call("GET", f"/api/v1/jobs/{job_id}")["state"] == "PENDING"
    go.touch()
    for job_id in ids:
        assert wait_state(r, job_id, TERMINAL, 60)["state"] == "COMPLETED"
    expected = [j for _, j in sorted(zip(priorities, ids, strict=True),
                                     key=lambda x: (-x[0], x[1]))]
    assert [int(x) for x in order.read_text().split()] == expected


async def test_begin_time_is_kept_while_the_scheduler_restarts(start_system: Factory) -> None:
    """The scheduler finds waiting begin times from PostgreSQL, not from memory."""
    r = await asyncio.to_thread(start_system, cpus=2)
    begin = datetime.now(UTC) + timedelta(seconds=2)
    job = await asyncio.to_thread(submit, r, "true\n", begin_at=begin.isoformat())
    r.system.kill("scheduler")
    r.system.restart("scheduler")
    done = await asyncio.to_thread(wait_state, r, job["id"], TERMINAL, 30)
    assert done["state"] == "COMPLETED" and ts(done["started_at"]) >= begin.timestamp()
