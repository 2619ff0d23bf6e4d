"""Cron schedules firing against a real PostgreSQL and Redis, on a hand-moved clock: exactly
once across replicas and across a crash in the firing transaction, the concurrency and
catch-up policies, and the failure streak that disables a schedule."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from redis.asyncio import Redis

from services.scheduler.cron import CronLoop
from shared.arrays import parse_array
from shared.db.jobs import JobSpec
from shared.db.pool import create_pool
from shared.db.schedules import NewSchedule, Schedule, ScheduleStore
from shared.settings import Settings
from shared.states import JobState
from shared.wiring import Wiring
from tests.helpers import wire

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, on a minute boundary
MINUTE = timedelta(minutes=1)


@dataclass
class Clock:
    at: datetime

    def now(self) -> datetime:
        return self.at


async def schedule(pool: asyncpg.Pool[Any], *, cron: str = "* * * * *", first: datetime = T0,
                   **kw: Any) -> Schedule:
    spec = NewSchedule(name=kw.pop("name", "every-minute"), user="ann", cron=cron,
                       timezone=kw.pop("timezone", "UTC"),
                       job=JobSpec(script="echo tick", name="tick", user="ann"), **kw)
    s = await ScheduleStore(pool).create(spec, next_run_at=first)
    assert s is not None
    return s


async def jobs_of(pool: asyncpg.Pool[Any], schedule_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, state, reason, user_name, cancel_requested, dependency "
                            "FROM jobs WHERE schedule_id = $1 ORDER BY id", schedule_id)


async def runs_of(pool: asyncpg.Pool[Any], schedule_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT fire_at, kind, job_id, skipped, state FROM schedule_runs "
                            "WHERE schedule_id = $1 ORDER BY fire_at, id", schedule_id)


async def test_three_replicas_over_100_fire_times_make_exactly_100_jobs(
        settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    s = await schedule(pool, concurrency="allow", max_failures=0)
    clock = Clock(T0)
    pools = [await create_pool(settings.database_url, max_size=3) for _ in range(3)]
    try:
        replicas = [CronLoop(wire(settings, redis, p), clock) for p in pools]
        made: list[int] = []
        for i in range(100):
            # every replica ticks at once, a little after the fire time (up to 30 s late)
            clock.at = T0 + i * MINUTE + timedelta(seconds=(i * 7) % 30)
            ticks = await asyncio.gather(*(r.tick() for r in replicas))
            made += [j for t in ticks for j in t.jobs]
            assert sum(len(t.jobs) for t in ticks) == 1, f"fire {i}: {ticks}"
    finally:
        for p in pools:
            await p.close()
    jobs = await jobs_of(pool, s.id)
    runs = await runs_of(pool, s.id)
    assert len(jobs) == 100 and sorted(made) == [j["id"] for j in jobs]
    assert [r["fire_at"] for r in runs] == [T0 + i * MINUTE for i in range(100)]
    assert all(r["kind"] == "cron" and r["job_id"] is not None for r in runs)
    assert {j["user_name"] for j in jobs} == {"ann"}
    after = await ScheduleStore(pool).get(s.id)
    assert after is not None and after.run_count == 100
    assert after.next_run_at == T0 + 100 * MINUTE


KILLED_TICK = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime
    from services.scheduler.cron import CronLoop
    from shared import failpoints
    from shared.db.pool import create_pool
    from shared.redis import connect
    from shared.settings import Settings
    from shared.wiring import Wiring

    class Clock:
        def now(self):
            return datetime.fromisoformat(sys.argv[1])

    async def main():
        settings = Settings.from_env()
        failpoints.configure(settings.failpoint)
        pool = await create_pool(settings.database_url, max_size=2)
        redis = connect(settings.redis_url, name="killed-tick")
        await CronLoop(Wiring.build(settings, redis, pool), Clock()).tick()
        print("tick finished: the failpoint was not reached")

    asyncio.run(main())
""")


async def test_a_replica_killed_between_choosing_and_committing_a_fire(
        settings: Settings, redis: Redis, pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    s = await schedule(pool)
    at = T0 + timedelta(seconds=3)
    env = {**os.environ, **replace(settings, failpoint="cron:before-commit").as_env()}
    proc = subprocess.run([sys.executable, "-c", KILLED_TICK, at.isoformat()], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    # it had chosen the fire and written its job when it died: nothing of it is left
    assert await jobs_of(pool, s.id) == []
    assert await runs_of(pool, s.id) == []
    # the next replica makes that fire, once
    survivor = CronLoop(wiring, Clock(at))
    assert len((await survivor.tick()).jobs) == 1
    assert (await survivor.tick()).jobs == []
    jobs, runs = await jobs_of(pool, s.id), await runs_of(pool, s.id)
    assert len(jobs) == 1 and [(r["fire_at"], r["job_id"]) for r in runs] == [(T0, jobs[0]["id"])]


async def start(w: Wiring, job_id: int) -> None:
    """Place and start the job on worker "big" (it then runs longer than the period)."""
    lc = w.lifecycle
    job = await lc.jobs.get(job_id)
    assert job is not None and job.state is JobState.PENDING
    assert (await lc.place([(job_id, job.attempt, "big")])).placed
    assert await lc.start(job_id, job.attempt, "big") is not None


async def finish(w: Wiring, job_id: int, end: JobState) -> None:
    job = await w.lifecycle.jobs.get(job_id)
    assert job is not None
    if job.state is JobState.PENDING:
        await start(w, job_id)
        job = await w.lifecycle.jobs.get(job_id)
        assert job is not None
    await w.lifecycle.finish(job, end, exit_code=0 if end is JobState.COMPLETED else 1)


async def test_forbid_skips_fires_while_the_previous_run_is_active(
        pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    s = await schedule(pool, concurrency="forbid")
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    first = (await loop.tick()).jobs
    await start(wiring, first[0])
    for i in (1, 2):  # the job runs for more than two periods
        clock.at = T0 + i * MINUTE
        t = await loop.tick()
        assert t.jobs == [] and len(t.fires) == 1
        assert f"job {first[0]}" in str(t.fires[0].skipped)
    await finish(wiring, first[0], JobState.COMPLETED)
    clock.at = T0 + 3 * MINUTE
    assert len((await loop.tick()).jobs) == 1
    runs = await runs_of(pool, s.id)
    assert [r["skipped"] is None for r in runs] == [True, False, False, True]
    assert "concurrency=forbid" in runs[1]["skipped"]


async def test_allow_runs_them_side_by_side(pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    s = await schedule(pool, concurrency="allow")
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    (first,) = (await loop.tick()).jobs
    await start(wiring, first)
    for i in (1, 2):
        clock.at = T0 + i * MINUTE
        assert len((await loop.tick()).jobs) == 1
    jobs = await jobs_of(pool, s.id)
    assert [j["state"] for j in jobs] == ["RUNNING", "PENDING", "PENDING"]
    assert all(j["dependency"] is None for j in jobs)


async def test_replace_cancels_the_active_run_and_starts_after_it(
        pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    s = await schedule(pool, concurrency="replace")
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    (first,) = (await loop.tick()).jobs
    await start(wiring, first)
    clock.at = T0 + MINUTE
    (second,) = (await loop.tick()).jobs
    jobs = {j["id"]: j for j in await jobs_of(pool, s.id)}
    # the running one is being stopped; the new one waits for it to be gone
    assert jobs[first]["state"] == "RUNNING" and jobs[first]["cancel_requested"]
    assert jobs[second]["state"] == "PENDING" and jobs[second]["reason"] == "Dependency"
    assert jobs[second]["dependency"] == f"afterany:{first}"
    # a replaced job that had not started yet is cancelled at once
    clock.at = T0 + 2 * MINUTE
    (third,) = (await loop.tick()).jobs
    jobs = {j["id"]: j for j in await jobs_of(pool, s.id)}
    assert jobs[second]["state"] == "CANCELLED" and jobs[third]["state"] == "PENDING"


async def test_replace_of_an_array_cancels_every_element(
        pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    store = ScheduleStore(pool)
    spec = NewSchedule(name="sweep", user="ann", cron="* * * * *", timezone="UTC",
                       concurrency="replace",
                       job=JobSpec(script="true", name="sweep", user="ann",
                                   array=parse_array("0-3%2")))
    s = await store.create(spec, next_run_at=T0)
    assert s is not None
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    (first,) = (await loop.tick()).jobs
    clock.at = T0 + MINUTE
    (second,) = (await loop.tick()).jobs
    states = await pool.fetch("SELECT array_job_id, state FROM jobs WHERE schedule_id = $1",
                              s.id)
    assert {r["state"] for r in states if r["array_job_id"] == first} == {"CANCELLED"}
    assert {r["state"] for r in states if r["array_job_id"] == second} == {"PENDING"}
    assert len(states) == 8


async def test_a_lost_replace_cancel_is_sent_again(
        pool: asyncpg.Pool[Any], wiring: Wiring, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fire committed, then the process died before cancelling the run it replaced: the
    next tick cancels it."""
    s = await schedule(pool, concurrency="replace")
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    (first,) = (await loop.tick()).jobs
    await start(wiring, first)

    async def lost(*_: Any, **__: Any) -> None:
        return None

    monkeypatch.setattr(loop.firing, "_cancel", lost)
    clock.at = T0 + MINUTE
    (second,) = (await loop.tick()).jobs
    jobs = {j["id"]: j for j in await jobs_of(pool, s.id)}
    assert jobs[first]["state"] == "RUNNING" and not jobs[first]["cancel_requested"]
    monkeypatch.undo()
    await CronLoop(wiring, clock).tick()  # a new process: nothing due, the sweep cancels
    jobs = {j["id"]: j for j in await jobs_of(pool, s.id)}
    assert jobs[first]["cancel_requested"] and jobs[second]["state"] == "PENDING"


@pytest.mark.parametrize(("catch_up", "concurrency", "made"),
                         [("skip", "allow", 0), ("once", "allow", 1), ("all", "allow", 10),
                          ("all", "forbid", 10)])
async def test_catch_up_after_an_outage_of_ten_periods(
        pool: asyncpg.Pool[Any], wiring: Wiring, catch_up: str, concurrency: str,
        made: int) -> None:
    s = await schedule(pool, catch_up=catch_up, concurrency=concurrency, first=T0 + MINUTE)
    # the last fire was at T0; nothing ran until ten and a half periods later
    clock = Clock(T0 + timedelta(minutes=10, seconds=30))
    t = await CronLoop(wiring, clock).tick()
    assert len(t.jobs) == made
    runs = await runs_of(pool, s.id)
    assert [r["fire_at"] for r in runs] == [T0 + i * MINUTE for i in range(1, 11)]
    assert {r["kind"] for r in runs} == {"catch-up"}
    assert sum(r["job_id"] is not None for r in runs) == made
    if catch_up == "once":
        assert runs[-1]["job_id"] is not None  # the latest missed fire is the one made
    if concurrency == "forbid":  # owed fires run one after another, never side by side
        jobs = await jobs_of(pool, s.id)
        assert [j["dependency"] for j in jobs[1:]] == [f"afterany:{j['id']}" for j in jobs[:-1]]
    after = await ScheduleStore(pool).get(s.id)
    assert after is not None and after.next_run_at == T0 + 11 * MINUTE
    assert (await CronLoop(wiring, clock).tick()).fires == []


async def test_catch_up_is_bounded(pool: asyncpg.Pool[Any], wiring: Wiring,
                                   settings: Settings) -> None:
    s = await schedule(pool, catch_up="all", concurrency="allow")
    w = replace(wiring, settings=replace(settings, cron_max_catchup=5))
    t = await CronLoop(w, Clock(T0 + timedelta(days=30))).tick()  # 43,200 missed
    assert len(t.jobs) == 5
    runs = await runs_of(pool, s.id)
    assert runs[-1]["fire_at"] == T0 + timedelta(days=30)


async def test_three_failed_runs_disable_and_enable_resets(
        pool: asyncpg.Pool[Any], wiring: Wiring, redis: Redis) -> None:
    s = await schedule(pool, concurrency="allow", max_failures=3)
    clock = Clock(T0)
    loop = CronLoop(wiring, clock)
    store = ScheduleStore(pool)
    ends = [JobState.FAILED, JobState.COMPLETED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY,
            JobState.NODE_FAIL]
    for i, end in enumerate(ends):
        clock.at = T0 + i * MINUTE
        (job_id,) = (await loop.tick()).jobs
        await finish(wiring, job_id, end)  # settled by the next tick, before it fires
    clock.at = T0 + len(ends) * MINUTE
    t = await loop.tick()  # settles the last run: the third failure in a row
    assert t.jobs == []
    after = await store.get(s.id)
    assert after is not None and not after.enabled
    assert after.consecutive_failures == 3 and after.failure_count == 4
    assert after.disabled_reason is not None and "3 consecutive failed runs" in \
        after.disabled_reason
    stream = await redis.xrange(wiring.keys.stream("schedule-disabled"))
    assert len(stream) == 1
    # disabled: due times come and go without a fire
    clock.at = T0 + 20 * MINUTE
    assert (await loop.tick()).fires == []
    # enable resets the streak and it fires again, from now (no catch-up of the disabled time)
    enabled = await store.enable(s.id, owner="ann", next_run_at=T0 + 21 * MINUTE)
    assert enabled is not None and enabled.consecutive_failures == 0
    assert enabled.disabled_reason is None
    clock.at = T0 + 21 * MINUTE
    assert len((await loop.tick()).jobs) == 1
    # settling twice counts once
    assert await loop.firing.settle() == 0
    again = await store.get(s.id)
    assert again is not None and again.failure_count == 4


async def test_a_fire_emits_schedule_fired_and_the_job_knows_its_schedule(
        pool: asyncpg.Pool[Any], wiring: Wiring, redis: Redis) -> None:
    s = await schedule(pool)
    (job_id,) = (await CronLoop(wiring, Clock(T0)).tick()).jobs
    job = await wiring.jobs.get(job_id)
    assert job is not None and job.schedule_id == s.id and job.user == "ann"
    assert job.env["SCNS_SCHEDULE_ID"] == str(s.id)
    assert job.env["SCNS_SCHEDULE_FIRE_TIME"] == "2026-03-02T09:00:00Z"
    entries = await redis.xrange(wiring.keys.stream("schedule-fired"))
    assert len(entries) == 1 and f"\"job_id\":{job_id}" in entries[0][1]["e"]


async def test_daylight_saving_daily_0230_fires_once_on_both_transition_days(
        pool: asyncpg.Pool[Any], wiring: Wiring) -> None:
    """Europe/Berlin: 2026-03-29 skips 02:00-03:00 (the 02:30 run is at 03:00), 2026-10-25
    repeats 02:00-03:00 (the 02:30 run is at the first 02:30)."""
    berlin = ZoneInfo("Europe/Berlin")
    store = ScheduleStore(pool)
    for day, name, expected in (
            (datetime(2026, 3, 28, tzinfo=UTC), "spring", ["02:30", "03:00", "02:30"]),
            (datetime(2026, 10, 24, tzinfo=UTC), "autumn", ["02:30", "02:30", "02:30"])):
        s = await schedule(pool, cron="30 2 * * *", timezone="Europe/Berlin", name=name,
                           first=day)
        clock = Clock(day)
        loop = CronLoop(wiring, clock)
        while clock.at < day + timedelta(days=3):  # each tick a second after the next fire
            await loop.tick()
            current = await store.get(s.id)
            assert current is not None and current.next_run_at is not None
            clock.at = current.next_run_at + timedelta(seconds=1)
            for j in await jobs_of(pool, s.id):  # so that forbid lets the next one in
                if j["state"] == "PENDING":
                    await finish(wiring, j["id"], JobState.COMPLETED)
        runs = await runs_of(pool, s.id)
        local = [r["fire_at"].astimezone(berlin) for r in runs]
        assert [t.strftime("%H:%M") for t in local] == expected, local
        assert len({t.date() for t in local}) == 3  # one run per day, the transition day too
        assert all(r["kind"] == "cron" and r["job_id"] is not None for r in runs)
