"""Acceptance: a CI-sized chaos run (1,000 jobs, 30+ faults of every kind, with hold, release,
requeue and retry traffic and cron schedules mixed in) keeps every promise; and one with network
partitions (executors and the scheduler cut off from Redis and PostgreSQL, healed by reset or by
resuming the held connections) and every service's clock skewed by up to 5 s, where no two
attempts of one job may ever run at the same time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos.driver import KINDS, PARTITION_KINDS, Chaos, ChaosConfig, ChaosResult


def run_and_report(chaos: Chaos) -> ChaosResult:
    """Run; print the summary, and the logs' tails when a promise broke (the work directory is
    then kept: its path is printed), else clean up."""
    try:
        result = asyncio.run(chaos.run())
    finally:
        logs = chaos.work / "sys" / "logs"
        tails = {p.name: p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log")} \
            if logs.exists() else {}
    print(result.summary())
    if not result.ok:
        for name, tail in tails.items():
            print(f"--- {name}\n{tail}")
        print(f"kept: {chaos.work}")
    else:
        chaos.cleanup()
    return result


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_chaos_ci_sized() -> None:
    chaos = Chaos(ChaosConfig(jobs=1000, faults=30, submit_seconds=100.0, seed=7))
    result = run_and_report(chaos)
    # every submit got its answer in the end: one whose answer was lost with a killed gateway
    # was retried with its Idempotency-Key, and no retry made a second job
    assert result.accepted == 1000
    assert result.uncertain_created == 0
    assert sum(result.faults.values()) >= 30
    assert set(result.faults) == set(KINDS)
    assert result.lost == 0
    assert result.double_run_attempts == 0
    # job control was part of the load, and did what it says
    assert result.held > 0 and result.reheld > 0 and result.requeued > 0
    assert result.retry_jobs > 0
    assert result.held_never_released == 0
    assert result.requeued_without_new_attempt == 0
    assert result.retry_jobs_completed_on_attempt_1 == 0
    assert result.unexplained_runs == 0
    assert set(result.states) <= {"COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED", "TIMEOUT"}
    # schedules fired through the faults: every minute's fire made one job, run once
    assert result.schedule_fires_during_faults > 0
    assert result.schedule_fires_lost == 0 and result.schedule_fires_doubled == 0
    assert result.schedule_fires_run_twice == 0
    assert result.overlapping_attempts == 0
    assert result.drift_after_faults == 0
    assert result.final_allocated_cpus == 0 and result.final_unreleased_rows == 0
    assert result.leftover_processes == 0
    assert result.services_died == []
    assert result.ok


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_partitions() -> None:
    """300 jobs (15% of them sleeping 2-20 s, so that partitions catch them running) while an
    executor (sometimes every executor) and the scheduler are each cut off from Redis and
    PostgreSQL 6+ times for 4-14 s, across the fence's timeline: healed before the executor
    would stop its jobs, after it fenced them but before the cluster may declare them lost,
    and after; healed by resetting the held connections or by resuming them (requests queued
    during the cut arrive late). The kills, Redis wipes and PostgreSQL stops go on meanwhile,
    and every service's clock is off by up to 5 s."""
    chaos = Chaos(ChaosConfig(jobs=300, faults=12, submit_seconds=60.0, seed=11,
                              partitions=True, skew=True, min_partitions=6,
                              long_job_fraction=0.15, settle_timeout_s=150.0))
    result = run_and_report(chaos)
    assert result.accepted == 300
    # six of each kind: every band of the fence's timeline with each heal mode
    assert result.faults.get("partition-executor", 0) >= 6
    assert result.faults.get("partition-scheduler", 0) >= 6
    assert set(result.faults) == set(KINDS) | set(PARTITION_KINDS)
    assert set(result.heals) == {"reset", "resume"}
    assert len(result.partition_timeline) == 3  # before TERM, between, after lost
    assert result.long_jobs > 0 and result.marked_runs > 0
    # the promise this run is for: no two attempts of one job ever alive at once
    assert result.overlapping_attempts == 0, result.overlapping_jobs
    assert result.lost == 0 and result.uncertain_created == 0
    assert result.double_run_attempts == 0 and result.unexplained_runs == 0
    assert result.schedule_fires_lost == 0 and result.schedule_fires_doubled == 0
    assert result.schedule_fires_run_twice == 0
    assert result.dependency_violations == 0 and result.array_throttle_exceeded == 0
    assert result.drift_after_faults == 0
    assert result.final_allocated_cpus == 0 and result.final_unreleased_rows == 0
    assert result.leftover_processes == 0
    assert result.services_died == []
    assert set(result.states) <= {"COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED", "TIMEOUT"}
    assert result.ok


def test_the_overlap_check_sees_two_runs_of_a_job_alive_at_once(tmp_path: Path) -> None:
    """The checker behind `overlapping_attempts`, on real runs of the jobs' preamble: two
    attempts of job 7 alive at once are caught by the lock (and by their marks); job 8's
    attempts one after the other are not; nor is job 9's second attempt after its first was
    SIGKILLed (no end mark; the lock died with it). A pair of marks that intersect with no lock
    line (as if the lock had missed it) counts too."""
    chaos = Chaos(ChaosConfig(), workdir=tmp_path)
    script = tmp_path / "job.sh"
    # each run waits for its own go-file: the order below is made, not hoped for
    script.write_text(chaos._preamble() + 'while [ ! -e "$GO" ]; do sleep 0.02; done\n')

    def run(job: int, attempt: int) -> tuple[subprocess.Popen[bytes], Path]:
        go = tmp_path / f"go-{job}-{attempt}"
        return subprocess.Popen(["bash", str(script)], start_new_session=True, env={
            **os.environ, "SCNS_JOB_ID": str(job), "SCNS_ATTEMPT": str(attempt),
            "GO": str(go)}), go

    def started(job: int, attempt: int) -> None:
        deadline = time.monotonic() + 30
        while f"start {job} {attempt} " not in (chaos.marks.read_text()
                                                if chaos.marks.exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def finish(proc: tuple[subprocess.Popen[bytes], Path]) -> None:
        proc[1].touch()
        assert proc[0].wait(30) == 0

    first = run(7, 1)
    started(7, 1)
    second = run(7, 2)  # while the first still runs
    started(7, 2)
    finish(second)
    finish(first)
    finish(run(8, 1))
    finish(run(8, 2))
    killed = run(9, 1)
    started(9, 1)
    os.killpg(killed[0].pid, signal.SIGKILL)
    killed[0].wait(30)
    finish(run(9, 2))
    assert chaos._overlaps() == (1, [7])
    with chaos.marks.open("a") as f:  # job 10: intersecting marks, no lock line
        f.write("start 10 1 100.0\nend 10 1 105.0\nstart 10 2 104.0\nend 10 2 106.0\n")
    assert chaos._overlaps() == (2, [7, 10])
    assert chaos.result.marked_runs == 8
