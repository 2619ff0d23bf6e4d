"""Partitions, per-user limits, fair share and the pending explainer, on a real PostgreSQL and
Redis: the gateway in-process (user ann's token; worker "big", 8 CPUs, no labels) and the
scheduler's real pass, with the lifecycle standing in for executors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.scheduler.service import Scheduler
from shared.db.partitions import ShareStore
from shared.keys import Keys
from shared.membership import Membership
from shared.priority import fair_share
from shared.states import JobState
from shared.wiring import Wiring
from tests.helpers import add_worker
from tests.integration.conftest import bearer

Http = TestClient[Any, Any]
HALF_LIFE = 7 * 86_400.0


async def admin(pool: asyncpg.Pool[Any]) -> dict[str, str]:
    return await bearer(pool, "root", "admin")


async def call(http: Http, method: str, path: str, *, status: int, **kw: Any) -> Any:
    resp = await http.request(method, f"/api/v1{path}", **kw)
    body = await resp.json() if resp.status != 204 else None
    assert resp.status == status, body
    return body


async def submit(http: Http, *, status: int = 201, headers: dict[str, str] | None = None,
                 **fields: Any) -> Any:
    return await call(http, "POST", "/jobs", status=status, headers=headers,
                      json={"script": "true", **fields})


async def jobs_of(pool: asyncpg.Pool[Any], user: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, user_name, state, reason, worker_id, cpus FROM jobs "
                            "WHERE $1::text IS NULL OR user_name = $1 ORDER BY id", user)


async def held_cpus(pool: asyncpg.Pool[Any], user: str) -> int:
    n: int = await pool.fetchval("SELECT coalesce(sum(cpus), 0) FROM jobs WHERE user_name = $1 "
                                 "AND state IN ('ALLOCATED', 'RUNNING')", user)
    return n


async def end_allocated(w: Wiring, pool: asyncpg.Pool[Any], user: str, *,
                        ran_s: float = 0.0) -> int:
    """Start and complete every ALLOCATED job of `user` (what executors would do), as if each
    ran for `ran_s` seconds."""
    n = 0
    for r in await pool.fetch("SELECT id, attempt, worker_id FROM jobs WHERE user_name = $1 "
                              "AND state = 'ALLOCATED'", user):
        job = await w.lifecycle.start(r["id"], r["attempt"], r["worker_id"])
        assert job is not None
        await pool.execute("UPDATE jobs SET started_at = now() - make_interval(secs => $2) "
                           "WHERE id = $1", r["id"], ran_s)
        await w.lifecycle.finish(job, JobState.COMPLETED, exit_code=0)
        n += 1
    return n


@pytest.fixture
async def cluster(http: Http, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]
                  ) -> dict[str, str]:
    """Partitions `arm` (two 4-CPU arm64 workers) and `x86` (one 4-CPU x86_64 worker, at most
    600 s per job); the admin's headers."""
    m = Membership(redis, keys)
    await add_worker(m, "a1", cpus=4, memory_mb=1024, labels={"arch": "arm64"})
    await add_worker(m, "a2", cpus=4, memory_mb=1024, labels={"arch": "arm64"})
    await add_worker(m, "x1", cpus=4, memory_mb=1024, labels={"arch": "x86_64"})
    root = await admin(pool)
    await call(http, "POST", "/partitions", status=201, headers=root,
               json={"name": "arm", "selector": {"arch": "arm64"}})
    await call(http, "POST", "/partitions", status=201, headers=root,
               json={"name": "x86", "selector": {"arch": "x86_64"}, "max_time_limit": 600,
                     "default_time_limit": 300})
    return root


async def test_jobs_land_only_on_their_partitions_workers(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any], cluster: dict[str, str]) -> None:
    arm = [(await submit(http, partition="arm"))["id"] for _ in range(8)]
    x86 = [(await submit(http, partition="x86"))["id"] for _ in range(2)]
    sched = Scheduler(wiring)
    await sched.run_pass()
    rows = {r["id"]: r for r in await jobs_of(pool)}
    assert {rows[j]["worker_id"] for j in arm} == {"a1", "a2"}
    assert all(rows[j]["state"] == "ALLOCATED" for j in arm)  # exactly the 8 arm CPUs
    assert {rows[j]["worker_id"] for j in x86} == {"x1"}

    # a job's partitions default its time limit; a limit above the maximum is a 4xx
    timed = await submit(http, partition="x86")
    assert timed["time_limit"] == 300
    body = await submit(http, partition="x86", time_limit=1200, status=422)
    assert "partition x86: time limit 1200 s above its maximum of 600 s" in \
        body["error"]["message"]
    # "arm,x86": any of them; arm is full, x86 has room
    either = (await submit(http, partition="arm,x86"))["id"]
    # ... but a 1200 s job may run in arm only (x86 refuses it): it waits for arm
    long = (await submit(http, partition="arm,x86", time_limit=1200))["id"]
    await sched.run_pass()
    rows = {r["id"]: r for r in await jobs_of(pool)}
    assert rows[either]["worker_id"] == "x1" and rows[timed["id"]]["worker_id"] == "x1"
    assert rows[long]["state"] == "PENDING" and rows[long]["reason"] == "Resources"
    # the default partition is every worker: "big" (no labels) has the room
    default = [(await submit(http))["id"] for _ in range(3)]
    await sched.run_pass()
    rows = {r["id"]: r for r in await jobs_of(pool)}
    assert {rows[j]["worker_id"] for j in default} == {"big"}
    assert rows[long]["state"] == "PENDING"  # never on big or x1


async def test_partition_admin_and_refusals(http: Http, wiring: Wiring,
                                            pool: asyncpg.Pool[Any],
                                            cluster: dict[str, str]) -> None:
    root = cluster
    listed = (await call(http, "GET", "/partitions", status=200))["items"]  # everyone reads
    by = {p["name"]: p for p in listed}
    assert by["arm"]["workers"] == ["a1", "a2"] and by["arm"]["total_cpus"] == 8
    assert by["x86"]["workers"] == ["x1"] and by["x86"]["max_time_limit"] == 600
    assert by["default"]["default"] and set(by["default"]["workers"]) == {"a1", "a2", "big",
                                                                          "x1"}
    # writes are an admin's
    await call(http, "POST", "/partitions", status=403, json={"name": "mine"})
    await call(http, "POST", "/partitions", status=409, headers=root, json={"name": "arm"})
    await call(http, "POST", "/partitions", status=400, headers=root, json={"name": "a b"})
    await call(http, "PATCH", "/partitions/nope", status=404, headers=root, json={"tier": 1})
    await call(http, "DELETE", "/partitions/default", status=409, headers=root)
    # unknown, and not allowed
    assert "no such partition" in (await submit(http, partition="gpu", status=422)
                                   )["error"]["message"]
    await call(http, "POST", "/partitions", status=201, headers=root,
               json={"name": "private", "allowed_users": ["bob"]})
    assert "user ann is not allowed" in (await submit(http, partition="private", status=422)
                                         )["error"]["message"]
    await submit(http, partition="private", headers=await bearer(pool, "bob"))
    # a partition in use cannot be deleted; an unused one can
    job = (await submit(http, partition="x86"))["id"]
    await call(http, "DELETE", "/partitions/x86", status=409, headers=root)
    # scontrol update is held to the partition's limits too
    body = await call(http, "PATCH", f"/jobs/{job}", status=422, json={"time_limit": 1200})
    assert "time limit 1200 s above its maximum of 600 s" in body["error"]["message"]
    await call(http, "PATCH", f"/jobs/{job}", status=200, json={"time_limit": 500})
    # narrowing a partition after submit: the job waits with the reason, and the
    # explainer says why
    await call(http, "PATCH", "/partitions/x86", status=200, headers=root,
               json={"max_time_limit": 100})
    await Scheduler(wiring).run_pass()
    row = await pool.fetchrow("SELECT state, reason FROM jobs WHERE id = $1", job)
    assert row is not None
    assert (row["state"], row["reason"]) == ("PENDING", "PartitionTimeLimit")
    ex = await call(http, "GET", f"/jobs/{job}/explain", status=200)
    assert ex["partitions"] == [{"name": "x86", "eligible": False,
                                 "why": "time limit 500 s above its maximum of 100 s"}]
    assert [r["reason"] for r in ex["reasons"]] == ["PartitionTimeLimit"]
    await call(http, "DELETE", f"/jobs/{job}", status=200)
    await call(http, "DELETE", "/partitions/x86", status=204, headers=root)
    # the default moves with `default: true`; jobs without -p go there
    await call(http, "PATCH", "/partitions/arm", status=200, headers=root,
               json={"default": True})
    assert (await submit(http))["partition"] == "arm"
    by = {p["name"]: p for p in (await call(http, "GET", "/partitions", status=200))["items"]}
    assert by["arm"]["default"] and not by["default"]["default"]


async def test_a_users_running_cpu_limit_holds_while_others_start(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any]) -> None:
    root = await admin(pool)
    limits = await call(http, "PUT", "/users/ann/limits", status=200, headers=root,
                        json={"max_running_cpus": 3})
    assert limits["max_running_cpus"] == 3 and limits["max_pending_jobs"] is None
    await submit(http, array="0-999")  # ann: 1,000 pending jobs
    bob = await bearer(pool, "bob")
    for _ in range(5):
        await submit(http, headers=bob)
    sched = Scheduler(wiring)
    for round_ in range(6):
        await sched.run_pass()
        assert await held_cpus(pool, "ann") == 3  # never more, never idle
        if round_ == 0:  # bob starts meanwhile: the other 5 CPUs of "big"
            assert await held_cpus(pool, "bob") == 5
            assert "QOSMaxCpuPerUserLimit" in {
                r["reason"] for r in await jobs_of(pool, "ann") if r["state"] == "PENDING"}
        assert await end_allocated(wiring, pool, "ann") == 3
    # a user reads their own limits (with what they hold), not another's
    mine = await call(http, "GET", "/users/ann/limits", status=200)
    assert mine["running_cpus"] == 0 and mine["pending_jobs"] == 1000 - 18
    await call(http, "GET", "/users/bob/limits", status=404)
    await call(http, "PUT", "/users/ann/limits", status=403, json={"max_running_cpus": 100})
    # a change takes effect at the next pass, without a restart
    await end_allocated(wiring, pool, "bob")
    await call(http, "PUT", "/users/ann/limits", status=200, headers=root,
               json={"max_running_cpus": 6})
    await sched.run_pass()
    assert await held_cpus(pool, "ann") == 6


async def test_max_pending_jobs_is_checked_at_submit(http: Http, pool: asyncpg.Pool[Any]
                                                     ) -> None:
    root = await admin(pool)
    await call(http, "PUT", "/users/ann/limits", status=200, headers=root,
               json={"max_pending_jobs": 10})
    body = await submit(http, array="0-10", status=409)  # 11 elements
    assert body["error"]["code"] == "max_pending_jobs"
    await submit(http, array="0-9")
    await submit(http, status=409)
    await submit(http, headers=await bearer(pool, "bob"))  # bob has no limit
    await call(http, "PUT", "/users/ann/limits", status=200, headers=root,
               json={"max_pending_jobs": None})
    await submit(http)


@pytest.fixture
async def small(http: Http, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any]) -> None:
    """Partition `small`: one 2-CPU worker, s1."""
    await add_worker(Membership(redis, keys), "s1", cpus=2, memory_mb=1024,
                     labels={"pool": "small"})
    await call(http, "POST", "/partitions", status=201, headers=await admin(pool),
               json={"name": "small", "selector": {"pool": "small"}})


@pytest.mark.usefixtures("small")
async def test_fair_share_places_the_user_with_less_usage_first(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any]) -> None:
    # ann has used the cluster (three finished 2-CPU attempts); bob has not
    for _ in range(3):
        await submit(http, cpus=2)
    sched = Scheduler(wiring)
    await sched.run_pass()
    assert await end_allocated(wiring, pool, "ann", ran_s=100) == 3
    # both queue for the small partition, ann first
    ann = [(await submit(http, partition="small"))["id"] for _ in range(4)]
    bob = [(await submit(http, partition="small", headers=await bearer(pool, "bob")))["id"]
           for _ in range(4)]
    sched.fair_at = -float("inf")  # the next pass re-reads usage (as every 5 s)
    await sched.run_pass()
    placed = {r["id"] for r in await jobs_of(pool) if r["state"] == "ALLOCATED"}
    assert placed == set(bob[:2]) and not placed & set(ann)

    share = await call(http, "GET", "/share", status=200)
    rows = {r["user"]: r for r in share["items"]}
    assert set(rows) == {"ann", "bob"}
    total = sum(r["usage_cpu_s"] for r in rows.values())
    assert rows["ann"]["usage_cpu_s"] == pytest.approx(600, rel=0.01)  # 3 x 2 CPUs x 100 s
    for r in rows.values():  # the factors are the documented formula of the shown figures
        assert r["share"] == 0.5
        assert r["usage_share"] == pytest.approx(r["usage_cpu_s"] / total, rel=1e-3)
        assert r["factor"] == pytest.approx(2 ** -(r["usage_share"] / r["share"]), rel=1e-6)
    assert rows["ann"]["factor"] < rows["bob"]["factor"]
    ex = await call(http, "GET", f"/jobs/{ann[0]}/explain", status=200)
    f = ex["priority"]["factors"]
    assert f["fairshare"] == pytest.approx(rows["ann"]["factor"], rel=1e-3)
    w = ex["priority"]["weights"]
    assert ex["priority"]["score"] == pytest.approx(
        w["tier"] * f["tier"] + w["fairshare"] * f["fairshare"] + w["age"] * f["age"]
        + w["job"] * f["job"], abs=0.01)


async def test_usage_is_counted_once_and_decays(http: Http, wiring: Wiring,
                                                pool: asyncpg.Pool[Any]) -> None:
    await submit(http, cpus=4)
    sched = Scheduler(wiring)
    await sched.run_pass()
    await end_allocated(wiring, pool, "ann", ran_s=50)
    store = ShareStore(pool)
    await store.rollup(HALF_LIFE)
    await store.rollup(HALF_LIFE)  # a repeat adds nothing
    (row,) = [u for u in await store.usage(HALF_LIFE) if u.user == "ann"]
    assert row.past_cpu_s == pytest.approx(200, rel=0.01)  # 4 CPUs x 50 s
    # one half-life later it counts half
    await pool.execute("UPDATE user_usage SET updated_at = updated_at - make_interval("
                       "secs => $1)", HALF_LIFE)
    (row,) = [u for u in await store.usage(HALF_LIFE) if u.user == "ann"]
    assert row.past_cpu_s == pytest.approx(100, rel=0.01)
    assert fair_share({"ann": row.cpu_s})["ann"].factor == 0.5  # all of it, all the share


async def test_a_pass_reads_what_it_can_place_not_the_queue(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any]) -> None:
    """20,000 pending jobs of one user and a few of another, 8 free CPUs: the pass reads the
    heads of the two groups, not the queue."""
    await submit(http, array="0-19999")
    for _ in range(3):
        await submit(http, headers=await bearer(pool, "bob"))
    result = await Scheduler(wiring).run_pass()
    assert result.placed == 8
    assert result.considered <= 2 * (8 + 64)  # two groups' heads: free CPUs + backfill room


@pytest.mark.usefixtures("small")
async def test_the_explainer_estimates_a_start_behind_fixed_length_jobs(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any]) -> None:
    # two running jobs of 100 s, then four of 100 s ahead, then ours
    for _ in range(2):
        await submit(http, partition="small", time_limit=100)
    sched = Scheduler(wiring)
    await sched.run_pass()
    for ran_s, r in zip((40, 30), await pool.fetch("SELECT id, attempt, worker_id FROM jobs "
                                                    "WHERE state = 'ALLOCATED'"), strict=True):
        assert await wiring.lifecycle.start(r["id"], r["attempt"], r["worker_id"])
        # as if they had run 40 s and 30 s: what they have left is counted from their start
        await pool.execute("UPDATE jobs SET started_at = started_at - make_interval(secs => $2)"
                           " WHERE id = $1", r["id"], ran_s)
    for _ in range(4):
        await submit(http, partition="small", time_limit=100)
    ours = (await submit(http, partition="small", time_limit=100))["id"]
    # the recorded start of the first running job, and PostgreSQL's clock around the request
    clocks = await pool.fetchrow("SELECT min(started_at) FILTER (WHERE state = 'RUNNING') "
                                 "AS first, clock_timestamp() AS now FROM jobs")
    assert clocks is not None
    first: datetime = clocks["first"]
    db_asked: datetime = clocks["now"]
    asked = datetime.now(UTC)
    ex = await call(http, "GET", f"/jobs/{ours}/explain", status=200)
    answered = datetime.now(UTC)
    db_answered: datetime = await pool.fetchval("SELECT clock_timestamp()")
    assert ex["ahead"] == 4
    # 2 CPUs: the running pair ends 100 s after it started (the first of the two frees its CPU
    # first), two ahead run from there to 200 s, the other two to 300 s; ours starts then:
    # 300 s after the first start (260 s from now). The explainer takes what the first job has
    # left from its recorded start by PostgreSQL's clock (its query ran between db_asked and
    # db_answered) and adds it to its own clock read just after that query
    # (services/gateway/explain.py): by this process's clock, late by 0 up to the request's time.
    # Bounds from recorded times only: no allowance for how fast this machine is, nor for the
    # two clocks agreeing.
    start = datetime.fromisoformat(ex["estimated_start_at"])
    from_asked = (start - asked).total_seconds()
    ran_before = (db_asked - first).total_seconds()
    ran_after = (db_answered - first).total_seconds()
    spent = (answered - asked).total_seconds()
    assert ran_before >= 40  # it had run 40 s when we asked
    assert 300 - ran_after - 0.001 <= from_asked <= 300 - ran_before + spent + 0.001, (
        from_asked, ran_before, ran_after, spent)
    assert {r["reason"] for r in ex["reasons"]} == {"Resources", "Priority"}
    # a held job says so and has no estimate
    await call(http, "POST", f"/jobs/{ours}/hold", status=200)
    ex = await call(http, "GET", f"/jobs/{ours}/explain", status=200)
    assert ex["reasons"][0]["reason"] == "Held" and ex["estimated_start_at"] is None
    # a job that is not pending: nothing to explain
    running = (await jobs_of(pool))[0]["id"]
    ex = await call(http, "GET", f"/jobs/{running}/explain", status=200)
    assert ex["reasons"] == [] and ex["estimate"] == "not pending (RUNNING)"


async def test_fair_share_converges_to_the_shares_through_the_real_pass(
        http: Http, wiring: Wiring, pool: asyncpg.Pool[Any]) -> None:
    """ann (3 shares) and bob (1 share) both keep the queue full for 48 simulated minutes on
    the 8 CPUs of "big": every simulated minute the scheduler's real pass places, the jobs it
    placed run one minute (their recorded run time), and the real roll-up turns them into
    usage. The CPU-seconds each received converge to their shares."""
    root = await admin(pool)
    await call(http, "PUT", "/users/ann/limits", status=200, headers=root, json={"shares": 3})
    bob = await bearer(pool, "bob")
    sched = Scheduler(wiring)
    got = {"ann": 0.0, "bob": 0.0}
    for _ in range(48):
        for user, headers in (("ann", None), ("bob", bob)):
            pending = await pool.fetchval("SELECT count(*) FROM jobs WHERE user_name = $1 "
                                          "AND state = 'PENDING'", user)
            for _ in range(10 - pending):  # always more waiting than the cluster holds
                await submit(http, headers=headers)
        sched.fair_at = -float("inf")  # a simulated minute: usage is read again
        result = await sched.run_pass()
        assert result.placed == 8  # the cluster stays full
        for user in got:
            got[user] += 60 * await end_allocated(wiring, pool, user, ran_s=60)
    total = sum(got.values())
    print(f"ann {got['ann'] / total:.3f}, bob {got['bob'] / total:.3f} of {total:.0f} CPU-s")
    assert got["ann"] / total == pytest.approx(0.75, abs=0.075)
    assert got["bob"] / total == pytest.approx(0.25, abs=0.025)
    rows = {r["user"]: r for r in (await call(http, "GET", "/share", status=200))["items"]}
    assert rows["ann"]["share"] == 0.75 and rows["bob"]["share"] == 0.25
    # what /share shows is the recorded usage: CPUs x recorded run time, all rolled up
    await ShareStore(pool).rollup(HALF_LIFE)
    rows = {r["user"]: r for r in (await call(http, "GET", "/share", status=200))["items"]}
    assert rows["ann"]["usage_cpu_s"] == pytest.approx(got["ann"], rel=0.01)
    assert rows["bob"]["usage_cpu_s"] == pytest.approx(got["bob"], rel=0.01)


async def test_a_partitions_per_user_limits(http: Http, wiring: Wiring, pool: asyncpg.Pool[Any],
                                            cluster: dict[str, str]) -> None:
    """arm lets each user run 3 CPUs; x86 lets each user have 4 pending jobs. A job counts in
    every partition it names."""
    root = cluster
    arm = await call(http, "PATCH", "/partitions/arm", status=200, headers=root,
                     json={"max_running_cpus_per_user": 3})
    assert arm["max_running_cpus_per_user"] == 3
    await call(http, "PATCH", "/partitions/x86", status=200, headers=root,
               json={"max_pending_jobs_per_user": 4})
    mine = [(await submit(http, partition="arm"))["id"] for _ in range(6)]
    either = [(await submit(http, partition="arm,x86"))["id"] for _ in range(2)]
    bobs = [(await submit(http, partition="arm", headers=await bearer(pool, "bob")))["id"]
            for _ in range(3)]
    await Scheduler(wiring).run_pass()
    rows = {r["id"]: r for r in await jobs_of(pool)}
    on_arm = [j for j in mine + either if rows[j]["worker_id"] in ("a1", "a2")]
    assert len(on_arm) == 3  # ann's 3 CPUs in arm, whatever she named
    assert all(rows[j]["worker_id"] == "x1" for j in either if j not in on_arm)
    assert all(rows[j]["worker_id"] in ("a1", "a2") for j in bobs)  # bob has his own 3
    waiting = [j for j in mine if rows[j]["state"] == "PENDING"]
    assert len(waiting) == 3 and {rows[j]["reason"] for j in waiting} == {
        "QOSMaxCpuPerUserLimit"}
    ex = await call(http, "GET", f"/jobs/{waiting[0]}/explain", status=200)
    assert ex["reasons"][0] == {
        "reason": "QOSMaxCpuPerUserLimit",
        "message": "ann holds 3 of the 3 CPUs each user may run in partition arm; this job "
                   "needs 1"}
    # pending jobs per user in x86: those naming it count, up to 4
    pending_x86 = await pool.fetchval("SELECT count(*) FROM jobs WHERE user_name = 'ann' AND "
                                      "state = 'PENDING' AND partition LIKE '%x86%'")
    for _ in range(4 - pending_x86):
        await submit(http, partition="x86")
    body = await submit(http, partition="arm,x86", status=409)
    assert "4 pending job(s) in partition x86" in body["error"]["message"]
    await submit(http, partition="arm")  # arm has no pending limit
