"""Arrays and dependencies against a real Redis and PostgreSQL: the gateway in-process, the
scheduler's passes and the lifecycle's finish driven by the test (no executor), so that every
step is deterministic."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.scheduler.service import Scheduler
from shared.dependencies import EdgeState, Kind, decide_job
from shared.lifecycle import Changed
from shared.states import TERMINAL, JobState
from shared.wiring import Wiring

Http = TestClient[Any, Any]


async def post(http: Http, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await http.post("/api/v1/jobs", json={"script": "true", **fields})
    return resp.status, await resp.json()


async def submit(http: Http, **fields: Any) -> dict[str, Any]:
    status, body = await post(http, **fields)
    assert status == 201, body
    return body


async def get(http: Http, ref: str) -> dict[str, Any]:
    resp = await http.get(f"/api/v1/jobs/{ref}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def run_to(w: Wiring, job_id: int, end: JobState) -> None:
    """Place, start and end the job's current attempt on worker "big"."""
    lc = w.lifecycle
    job = await lc.jobs.get(job_id)
    assert job is not None
    if job.state is JobState.PENDING:
        assert (await lc.place([(job_id, job.attempt, "big")])).placed
    started = await lc.start(job_id, job.attempt, "big")
    assert started is not None
    await lc.finish(started, end, exit_code=0 if end is JobState.COMPLETED else 1)


async def resolve(w: Wiring, *ended: int, fresh: tuple[int, ...] = ()) -> None:
    await w.lifecycle.resolve_dependencies(Changed(ended=set(ended), fresh=set(fresh)))


# --- arrays -------------------------------------------------------------------------------
async def test_an_array_is_one_submit_of_elements_with_their_own_ids(http: Http) -> None:
    a = await submit(http, script="echo $SCNS_ARRAY_TASK_ID", array="1,3,5-7", name="sweep")
    assert a["array_job_id"] == a["id"] and a["array_task_id"] == 1
    assert a["array"]["count"] == 5
    resp = await http.get("/api/v1/jobs", params={"array_job_id": str(a["id"])})
    items = (await resp.json())["items"]
    assert sorted(j["array_task_id"] for j in items) == [1, 3, 5, 6, 7]
    assert len({j["id"] for j in items}) == 5 and all("script" not in j for j in items)
    element = await get(http, f"{a['id']}_6")
    assert element["array_task_id"] == 6 and element["script"] == "echo $SCNS_ARRAY_TASK_ID"
    whole = await get(http, str(a["id"]))
    assert whole["array"]["states"] == {"PENDING": 5}
    for path in (f"{a['id']}_6/log", f"{a['id']}_6/attempts"):
        assert (await http.get(f"/api/v1/jobs/{path}")).status == 200
    assert (await http.get(f"/api/v1/jobs/{a['id']}_2")).status == 404
    assert (await http.get(f"/api/v1/jobs/{a['id']}_x")).status == 400


async def test_element_controls_and_whole_array_controls(http: Http) -> None:
    a = await submit(http, array="0-9")
    aid = a["id"]
    resp = await http.post(f"/api/v1/jobs/{aid}_4/hold")
    assert resp.status == 200 and (await resp.json())["reason"] == "Held"
    resp = await http.patch(f"/api/v1/jobs/{aid}_5", json={"priority": 7})
    assert resp.status == 200 and (await resp.json())["priority"] == 7
    resp = await http.post(f"/api/v1/jobs/{aid}/hold")
    assert resp.status == 200 and (await resp.json())["count"] == 9  # 4 was held already
    resp = await http.post(f"/api/v1/jobs/{aid}/release")
    assert resp.status == 200 and (await resp.json())["count"] == 10
    for verb in ("requeue",):
        resp = await http.post(f"/api/v1/jobs/{aid}/{verb}")
        assert resp.status == 400 and f"{aid}_0" in (await resp.json())["error"]["message"]
    resp = await http.delete(f"/api/v1/jobs/{aid}_9")
    assert resp.status == 200 and (await resp.json())["state"] == "CANCELLED"
    resp = await http.delete(f"/api/v1/jobs/{aid}")
    assert resp.status == 200 and (await resp.json()) == {"array_job_id": aid, "count": 9,
                                                          "stopping": 0}
    assert (await get(http, str(aid)))["array"]["states"] == {"CANCELLED": 10}
    resp = await http.delete(f"/api/v1/jobs/{aid}")
    assert resp.status == 409


async def test_bad_array_specs_are_400_with_a_message(http: Http) -> None:
    for spec in ("9-0", "a-b", "0-9%0", "0-99999999", "1,,2"):
        status, body = await post(http, array=spec)
        assert status == 400 and "'array'" in body["error"]["message"], (spec, body)


async def test_the_throttle_never_lets_more_than_n_run(http: Http, wiring: Wiring) -> None:
    a = await submit(http, array="0-9%2")
    aid = a["id"]
    sched = Scheduler(wiring)
    seen_max = 0
    for _ in range(12):
        await sched.run_pass()
        items = (await (await http.get("/api/v1/jobs", params={
            "array_job_id": str(aid), "limit": "100"})).json())["items"]
        live = [j for j in items if j["state"] in ("ALLOCATED", "RUNNING")]
        admitted = [j for j in items if j["state"] not in TERMINAL
                    and j["reason"] != "JobArrayTaskLimit"]
        assert len(admitted) <= 2
        seen_max = max(seen_max, len(live))
        if not live:
            break
        for j in live:
            await run_to(wiring, j["id"], JobState.COMPLETED)
    assert seen_max == 2
    assert (await get(http, str(aid)))["array"]["states"] == {"COMPLETED": 10}


async def test_a_held_throttled_array_released_keeps_its_throttle(http: Http,
                                                                  wiring: Wiring) -> None:
    a = await submit(http, array="0-5%2", hold=True)
    sched = Scheduler(wiring)
    await sched.run_pass()
    assert (await get(http, str(a["id"])))["array"]["states"] == {"PENDING": 6}
    assert (await http.post(f"/api/v1/jobs/{a['id']}/release")).status == 200
    await sched.run_pass()
    assert (await get(http, str(a["id"])))["array"]["states"] == {"ALLOCATED": 2,
                                                                  "PENDING": 4}


async def test_an_array_idempotency_key_makes_one_array(http: Http) -> None:
    headers = {"Idempotency-Key": "sweep-1"}
    r1 = await http.post("/api/v1/jobs", json={"script": "true", "array": "0-99"},
                         headers=headers)
    r2 = await http.post("/api/v1/jobs", json={"script": "true", "array": "0-99"},
                         headers=headers)
    assert (r1.status, r2.status) == (201, 200)
    one, two = await r1.json(), await r2.json()
    assert one["id"] == two["id"]
    assert (await get(http, str(one["id"])))["array"]["count"] == 100
    r3 = await http.post("/api/v1/jobs", json={"script": "true", "array": "0-9"},
                         headers=headers)
    assert r3.status == 409


# --- dependencies ---------------------------------------------------------------------------
async def test_a_chain_runs_in_order_and_a_failure_cancels_the_rest(http: Http,
                                                                    wiring: Wiring) -> None:
    a = await submit(http)
    b = await submit(http, dependency=f"afterok:{a['id']}")
    c = await submit(http, dependency=f"afterok:{b['id']}")
    assert (b["reason"], c["reason"]) == ("Dependency", "Dependency")
    await resolve(wiring, fresh=(b["id"], c["id"]))
    assert (await get(http, str(b["id"])))["reason"] == "Dependency"
    await run_to(wiring, a["id"], JobState.COMPLETED)
    await resolve(wiring, a["id"])
    assert (await get(http, str(b["id"])))["reason"] == "Priority"
    assert (await get(http, str(c["id"])))["reason"] == "Dependency"
    # a second chain whose head fails: both dependents end, in one resolution
    x = await submit(http)
    y = await submit(http, dependency=f"afterok:{x['id']}")
    z = await submit(http, dependency=f"afterok:{y['id']}")
    await run_to(wiring, x["id"], JobState.FAILED)
    await resolve(wiring, x["id"])
    for j in (y, z):
        got = await get(http, str(j["id"]))
        assert (got["state"], got["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")


async def test_the_scheduler_resolves_from_its_events(http: Http, wiring: Wiring,
                                                      redis: Redis) -> None:
    """The pass after a job-finished event makes its dependent placeable, and places it."""
    from shared.events import JobFinished

    a = await submit(http)
    b = await submit(http, dependency=f"afterany:{a['id']}")
    sched = Scheduler(wiring)
    await sched.run_pass()  # the first pass sweeps: b still waits
    got = await get(http, str(b["id"]))
    assert got["state"] == "ALLOCATED" or got["reason"] == "Dependency"
    await run_to(wiring, a["id"], JobState.FAILED)
    await sched.on_event(JobFinished(job_id=a["id"], attempt=1, worker_id="big",
                                     state="FAILED"), None)  # type: ignore[arg-type]
    await sched.run_pass()
    assert (await get(http, str(b["id"])))["state"] == "ALLOCATED"


@pytest.mark.parametrize("kind", ["after", "afterany", "afterok", "afternotok"])
@pytest.mark.parametrize("end", sorted(TERMINAL | {JobState.RUNNING}))
async def test_each_kind_against_each_state_as_the_rules_say(
        http: Http, wiring: Wiring, kind: str, end: JobState) -> None:
    """The SQL decides every edge as shared/dependencies.py's decide_job does."""
    target = await submit(http)
    dep = await submit(http, dependency=f"{kind}:{target['id']}")
    if end is JobState.RUNNING:
        job = await wiring.lifecycle.jobs.get(target["id"])
        assert job is not None
        await wiring.lifecycle.place([(job.id, 1, "big")])
        await wiring.lifecycle.start(job.id, 1, "big")
    elif end is JobState.CANCELLED:
        assert (await http.delete(f"/api/v1/jobs/{target['id']}")).status == 200
    else:
        await run_to(wiring, target["id"], end)
    await resolve(wiring, target["id"])
    got = await get(http, str(dep["id"]))
    expected = decide_job(Kind(kind), end)
    if expected is EdgeState.MET:
        assert (got["state"], got["reason"]) == ("PENDING", "Priority")
    elif expected is EdgeState.NEVER:
        assert (got["state"], got["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    else:
        assert (got["state"], got["reason"]) == ("PENDING", "Dependency")


async def test_any_of_and_all_of(http: Http, wiring: Wiring) -> None:
    a, b = await submit(http), await submit(http)
    either = await submit(http, dependency=f"afterok:{a['id']}?afterok:{b['id']}")
    both = await submit(http, dependency=f"afterok:{a['id']},afterok:{b['id']}")
    await run_to(wiring, a["id"], JobState.FAILED)
    await resolve(wiring, a["id"])
    assert (await get(http, str(either["id"])))["reason"] == "Dependency"
    assert (await get(http, str(both["id"])))["state"] == "CANCELLED"
    await run_to(wiring, b["id"], JobState.COMPLETED)
    await resolve(wiring, b["id"])
    assert (await get(http, str(either["id"])))["reason"] == "Priority"


async def test_singleton_waits_for_the_earlier_job_of_the_same_name(http: Http,
                                                                     wiring: Wiring) -> None:
    first = await submit(http, name="nightly")
    other = await submit(http, name="other")
    second = await submit(http, name="nightly", dependency="singleton")
    lone = await submit(http, name="lonely", dependency="singleton")
    await resolve(wiring, fresh=(second["id"], lone["id"]))
    assert (await get(http, str(second["id"])))["reason"] == "Dependency"
    assert (await get(http, str(lone["id"])))["reason"] == "Priority"
    await run_to(wiring, other["id"], JobState.COMPLETED)
    await resolve(wiring, other["id"])
    assert (await get(http, str(second["id"])))["reason"] == "Dependency"
    await run_to(wiring, first["id"], JobState.COMPLETED)
    await resolve(wiring, first["id"])
    assert (await get(http, str(second["id"])))["reason"] == "Priority"


async def test_dependencies_on_an_array_and_on_one_element(http: Http, wiring: Wiring) -> None:
    a = await submit(http, array="0-2")
    aid = a["id"]
    on_all = await submit(http, dependency=f"afterok:{aid}")
    on_one = await submit(http, dependency=f"afterok:{aid}_1")
    deps_array = await submit(http, array="0-3%2", dependency=f"afterany:{aid}_1")
    await run_to(wiring, (await get(http, f"{aid}_1"))["id"], JobState.COMPLETED)
    await resolve(wiring, (await get(http, f"{aid}_1"))["id"])
    assert (await get(http, str(on_one["id"])))["reason"] == "Priority"
    assert (await get(http, str(on_all["id"])))["reason"] == "Dependency"
    # the dependent array's elements now wait for their throttle, then two of them run
    states = (await get(http, str(deps_array["id"])))["array"]["states"]
    assert states == {"PENDING": 4}
    await wiring.lifecycle.admit_array_tasks()
    items = (await (await http.get("/api/v1/jobs", params={
        "array_job_id": str(deps_array["id"])})).json())["items"]
    assert sorted(j["reason"] for j in items) == ["JobArrayTaskLimit", "JobArrayTaskLimit",
                                                  "Priority", "Priority"]
    for i in (0, 2):
        await run_to(wiring, (await get(http, f"{aid}_{i}"))["id"], JobState.COMPLETED)
    await resolve(wiring, (await get(http, f"{aid}_2"))["id"])
    assert (await get(http, str(on_all["id"])))["reason"] == "Priority"


async def test_cancelling_an_array_cancels_what_waits_on_all_of_it(http: Http,
                                                                    wiring: Wiring) -> None:
    a = await submit(http, array="0-4")
    dep = await submit(http, dependency=f"afterok:{a['id']}")
    assert (await http.delete(f"/api/v1/jobs/{a['id']}")).status == 200
    await wiring.lifecycle.resolve_dependencies(Changed(arrays={a["id"]}))
    got = await get(http, str(dep["id"]))
    assert (got["state"], got["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")


async def test_unknown_or_malformed_dependencies_are_4xx_and_create_nothing(
        http: Http, pool: asyncpg.Pool[Any]) -> None:
    before = await pool.fetchval("SELECT count(*) FROM jobs")
    for dep, status in (("afterok:999999999", 400), ("afterok:12_999999", 400),
                        ("afterwards:1", 400), ("afterok:1,afterok:2?afterok:3", 400),
                        ("afterok", 400), ("singleton:4", 400)):
        got, body = await post(http, dependency=dep)
        assert got == status and body["error"]["message"], (dep, body)
    assert await pool.fetchval("SELECT count(*) FROM jobs") == before


async def test_test_only_validates_and_creates_nothing(http: Http,
                                                       pool: asyncpg.Pool[Any]) -> None:
    before = await pool.fetchval("SELECT count(*) FROM jobs")
    resp = await http.post("/api/v1/jobs?test_only=1",
                           json={"script": "true", "array": "0-9%2", "cpus": 2})
    body = await resp.json()
    assert resp.status == 200 and body["array_count"] == 10 and body["job"]["cpus"] == 2
    resp = await http.post("/api/v1/jobs?test_only=1",
                           json={"script": "true", "dependency": "afterok:999999999"})
    assert resp.status == 400
    assert await pool.fetchval("SELECT count(*) FROM jobs") == before


async def test_a_crlf_script_is_stored_with_unix_line_ends(http: Http) -> None:
    job = await submit(http, script="#!/bin/bash\r\necho hi\r\n")
    assert (await get(http, str(job["id"])))["script"] == "#!/bin/bash\necho hi\n"


async def test_nice_lowers_priority_and_only_an_admin_raises_it(http: Http) -> None:
    job = await submit(http, priority=50, nice=10)
    assert job["priority"] == 40
    status, _ = await post(http, nice=-5)
    assert status == 403
