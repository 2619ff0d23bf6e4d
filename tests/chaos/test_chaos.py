"""Acceptance: a CI-sized chaos run (1,000 jobs, 30+ faults of every kind, with hold, release,
requeue and retry traffic and cron schedules mixed in) keeps every promise."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.driver import KINDS, Chaos, ChaosConfig


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_chaos_ci_sized() -> None:
    chaos = Chaos(ChaosConfig(jobs=1000, faults=30, submit_seconds=100.0, seed=7))
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
    else:
        chaos.cleanup()
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
    assert result.drift_after_faults == 0
    assert result.final_allocated_cpus == 0 and result.final_unreleased_rows == 0
    assert result.leftover_processes == 0
    assert result.services_died == []
    assert result.ok
