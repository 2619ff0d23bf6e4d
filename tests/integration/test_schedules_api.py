"""Schedules through the gateway (real Redis and PostgreSQL, in-process aiohttp server): the
CRUD round trip, the 4xx of bad bodies, isolation between users, enable/disable and manual
triggers. No scheduler or executor runs here, so triggered jobs stay PENDING."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.gateway import openapi, validation
from shared.cron import next_fire
from tests.integration.conftest import bearer

JOB = {"script": "#!/bin/sh\necho tick\n", "cpus": 2, "time_limit": 600, "output": "/tmp/%j.out",
       "env": {"STAGE": "nightly"}}
OK = {"name": "nightly-etl", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "job": JOB}


async def create(http: TestClient[Any, Any], body: dict[str, Any] | None = None,
                 **headers: Any) -> dict[str, Any]:
    resp = await http.post("/api/v1/schedules", json=body or OK, **headers)
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def error_of(resp: Any, status: int) -> dict[str, str]:
    assert resp.status == status, await resp.text()
    payload = await resp.json()
    assert set(payload) == {"error"}
    err: dict[str, str] = payload["error"]
    return err


async def test_create_get_list_patch_delete(http: TestClient[Any, Any],
                                            pool: asyncpg.Pool[Any]) -> None:
    before = datetime.now(UTC)
    s = await create(http)
    assert s["name"] == "nightly-etl" and s["user"] == "ann"
    assert (s["cron"], s["timezone"]) == ("30 2 * * *", "Europe/Berlin")
    assert (s["concurrency"], s["catch_up"], s["max_failures"]) == ("forbid", "once", 3)
    assert s["enabled"] and s["disabled_reason"] is None
    assert (s["run_count"], s["failure_count"], s["consecutive_failures"]) == (0, 0, 0)
    assert s["last_run_at"] is None and s["last_job_id"] is None
    assert s["next_run_at"].endswith("Z") and s["created_at"].endswith("Z")
    assert when(s["next_run_at"]) == next_fire("30 2 * * *", "Europe/Berlin", before)
    # the job under the names POST /jobs uses (a job without a name is named after its schedule)
    job = s["job"]
    assert job["script"] == JOB["script"] and job["cpus"] == 2 and job["time_limit"] == 600
    assert job["output"] == "/tmp/%j.out" and job["env"] == {"STAGE": "nightly"}
    assert job["name"] == "nightly-etl" and job["priority"] == 0
    assert "time_limit_s" not in job and "stdout_path" not in job
    row = await pool.fetchrow("SELECT * FROM schedules WHERE id = $1", s["id"])
    assert row is not None and row["user_name"] == "ann" and row["job_spec"]["time_limit_s"] == 600

    got = await http.get(f"/api/v1/schedules/{s['id']}")
    assert got.status == 200 and await got.json() == s

    listed = await http.get("/api/v1/schedules")
    assert listed.status == 200
    page = await listed.json()
    assert [i["id"] for i in page["items"]] == [s["id"]] and page["next_cursor"] is None
    assert "script" not in page["items"][0]["job"] and "env" not in page["items"][0]["job"]
    by_name = await (await http.get("/api/v1/schedules", params={"name": "nightly-etl"})).json()
    assert [i["id"] for i in by_name["items"]] == [s["id"]]
    none = await (await http.get("/api/v1/schedules", params={"name": "other"})).json()
    assert none["items"] == []

    patched = await http.patch(f"/api/v1/schedules/{s['id']}", json={
        "cron": "@hourly", "timezone": "UTC", "concurrency": "allow", "max_failures": 0})
    assert patched.status == 200, await patched.text()
    p = await patched.json()
    assert (p["cron"], p["timezone"], p["concurrency"], p["max_failures"]) == \
        ("@hourly", "UTC", "allow", 0)
    assert p["name"] == "nightly-etl" and p["job"] == s["job"] and p["catch_up"] == "once"
    nxt = when(p["next_run_at"])
    assert nxt.minute == 0 and nxt.second == 0 and nxt != when(s["next_run_at"])
    # a change that touches neither the expression nor the zone keeps the next fire time
    renamed = await (await http.patch(f"/api/v1/schedules/{s['id']}", json={
        "name": "hourly-etl", "job": {"script": "echo v2\n", "priority": 5, "nice": 2}})).json()
    assert renamed["name"] == "hourly-etl" and renamed["next_run_at"] == p["next_run_at"]
    assert renamed["job"]["script"] == "echo v2\n" and renamed["job"]["name"] == "hourly-etl"
    assert (renamed["job"]["priority"], renamed["job"]["nice"]) == (5, 2)

    deleted = await http.delete(f"/api/v1/schedules/{s['id']}")
    assert deleted.status == 204
    assert (await http.get(f"/api/v1/schedules/{s['id']}")).status == 404
    assert (await http.delete(f"/api/v1/schedules/{s['id']}")).status == 404


async def test_created_disabled_has_no_next_run(http: TestClient[Any, Any]) -> None:
    s = await create(http, {**OK, "enabled": False, "catch_up": "all", "max_failures": 1000})
    assert not s["enabled"] and s["next_run_at"] is None
    assert (s["catch_up"], s["max_failures"]) == ("all", 1000)


# (case, body, status, code, a word the message must contain)
BAD: list[tuple[str, Any, int, str, str]] = [
    ("not an object", [OK], 400, "invalid_body", "JSON object"),
    ("unknown field", {**OK, "color": "red"}, 400, "unknown_field", "color"),
    ("missing name", {k: v for k, v in OK.items() if k != "name"}, 400, "missing_field",
     "'name'"),
    ("missing cron", {k: v for k, v in OK.items() if k != "cron"}, 400, "missing_field",
     "'cron'"),
    ("missing job", {k: v for k, v in OK.items() if k != "job"}, 400, "missing_field", "'job'"),
    ("name with a space", {**OK, "name": "nightly etl"}, 400, "invalid_field", "'name'"),
    ("name too long", {**OK, "name": "n" * 65}, 400, "invalid_field", "'name'"),
    ("name null", {**OK, "name": None}, 400, "invalid_field", "'name'"),
    ("bad cron field", {**OK, "cron": "61 * * * *"}, 400, "invalid_cron", "minute"),
    ("cron with 6 fields", {**OK, "cron": "0 0 * * * *"}, 400, "invalid_cron", "cron"),
    ("cron never fires", {**OK, "cron": "0 0 30 2 *"}, 400, "invalid_cron", "never fires"),
    ("cron not a string", {**OK, "cron": 5}, 400, "invalid_cron", "'cron'"),
    ("blank cron", {**OK, "cron": "  "}, 400, "invalid_cron", "empty"),
    ("unknown time zone", {**OK, "timezone": "Europe/Berln"}, 400, "invalid_timezone",
     "did you mean Europe/Berlin?"),
    ("time zone syntax", {**OK, "timezone": "../etc/passwd"}, 400, "invalid_timezone",
     "timezone"),
    ("time zone with spaces", {**OK, "timezone": " UTC"}, 400, "invalid_timezone", "IANA"),
    ("empty time zone", {**OK, "timezone": ""}, 400, "invalid_timezone", "IANA"),
    ("bad concurrency", {**OK, "concurrency": "sometimes"}, 400, "invalid_field",
     "'concurrency' must be forbid, allow or replace"),
    ("bad catch_up", {**OK, "catch_up": "never"}, 400, "invalid_field", "'catch_up'"),
    ("max_failures too big", {**OK, "max_failures": 1001}, 400, "invalid_field",
     "'max_failures'"),
    ("max_failures negative", {**OK, "max_failures": -1}, 400, "invalid_field",
     "'max_failures'"),
    ("enabled not a bool", {**OK, "enabled": "yes"}, 400, "invalid_field", "'enabled'"),
    ("job not an object", {**OK, "job": "echo hi"}, 400, "invalid_field", "'job'"),
    ("job without script", {**OK, "job": {"cpus": 1}}, 400, "missing_field",
     "job: 'script' is required"),
    ("job with begin_at", {**OK, "job": {**JOB, "begin_at": "2030-01-01T00:00:00Z"}}, 400,
     "invalid_field", "its fire time is its begin time"),
    ("job with dependency", {**OK, "job": {**JOB, "dependency": "afterok:1"}}, 400,
     "invalid_field", "'dependency'"),
    ("job with an unknown field", {**OK, "job": {**JOB, "colour": 1}}, 400, "unknown_field",
     "job: unknown field(s): colour"),
    ("job too big for the cluster", {**OK, "job": {**JOB, "cpus": 9}}, 422, "unsatisfiable",
     "job: 9 CPUs"),
    ("job priority of an admin", {**OK, "job": {**JOB, "priority": 1000}}, 403, "forbidden",
     "priority"),
    ("job negative nice", {**OK, "job": {**JOB, "nice": -5}}, 403, "forbidden", "nice"),
    ("another user's schedule", {**OK, "user": "bob"}, 403, "forbidden", "own schedules"),
]


@pytest.mark.parametrize(("case", "body", "status", "code", "words"), BAD,
                         ids=[b[0] for b in BAD])
async def test_bad_schedules_get_a_clear_4xx(http: TestClient[Any, Any], pool: asyncpg.Pool[Any],
                                             case: str, body: Any, status: int, code: str,
                                             words: str) -> None:
    err = await error_of(await http.post("/api/v1/schedules", json=body), status)
    assert err["code"] == code, err
    assert words in err["message"], err
    assert await pool.fetchval("SELECT count(*) FROM schedules") == 0


async def test_non_json_bodies_are_refused(http: TestClient[Any, Any]) -> None:
    err = await error_of(await http.post("/api/v1/schedules", data="name=x",
                                         headers={"Content-Type": "text/plain"}), 415)
    assert err["code"] == "unsupported_media_type"
    err = await error_of(await http.post("/api/v1/schedules", data=io.BytesIO(b"{name: x}"),
                                         headers={"Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"


async def test_a_duplicate_name_is_a_409_for_the_same_user_only(
        http: TestClient[Any, Any], pool: asyncpg.Pool[Any]) -> None:
    first = await create(http)
    err = await error_of(await http.post("/api/v1/schedules", json=OK), 409)
    assert err["code"] == "name_taken" and f"schedule {first['id']}" in err["message"]
    other = await create(http, OK, headers=await bearer(pool, "bob"))
    assert other["user"] == "bob"
    # renaming onto a taken name is a 409 too
    second = await create(http, {**OK, "name": "second"})
    err = await error_of(await http.patch(f"/api/v1/schedules/{second['id']}",
                                          json={"name": "nightly-etl"}), 409)
    assert err["code"] == "name_taken"


@pytest.mark.parametrize(("body", "code", "words"), [
    ({}, "invalid_body", "fields to change"),
    ({"enabled": False}, "unknown_field", "/disable"),
    ({"user": "bob"}, "unknown_field", "user"),
    ({"cron": "* * *"}, "invalid_cron", "3 field"),
    ({"timezone": "Mars/Olympus"}, "invalid_timezone", "Mars/Olympus"),
    ({"job": {"script": "echo", "begin_at": "2030-01-01"}}, "invalid_field", "begin time"),
    ({"name": None}, "invalid_field", "null"),
])
async def test_bad_patches_change_nothing(http: TestClient[Any, Any], body: dict[str, Any],
                                          code: str, words: str) -> None:
    s = await create(http)
    err = await error_of(await http.patch(f"/api/v1/schedules/{s['id']}", json=body), 400)
    assert err["code"] == code and words in err["message"], err
    assert await (await http.get(f"/api/v1/schedules/{s['id']}")).json() == s


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/schedules/abc", 400), ("GET", "/api/v1/schedules/0", 400),
    ("GET", "/api/v1/schedules/-1", 400), ("GET", "/api/v1/schedules/999", 404),
    ("PATCH", "/api/v1/schedules/abc", 400), ("POST", "/api/v1/schedules/abc/trigger", 400),
    ("GET", "/api/v1/schedules?limit=0", 400), ("GET", "/api/v1/schedules?cursor=x", 400),
    ("GET", "/api/v1/schedules?name=a%20b", 400), ("GET", "/api/v1/schedules/999/runs", 404),
    ("POST", "/api/v1/schedules/999/enable", 404), ("POST", "/api/v1/schedules/999/trigger", 404),
])
async def test_bad_ids_and_queries(http: TestClient[Any, Any], method: str, path: str,
                                   status: int) -> None:
    body = {"name": "x"} if method == "PATCH" else None
    err = await error_of(await http.request(method, path, json=body), status)
    assert err["message"]


async def test_another_users_schedule_is_not_found(http: TestClient[Any, Any],
                                                   pool: asyncpg.Pool[Any]) -> None:
    bob = await bearer(pool, "bob")
    theirs = await create(http, {**OK, "name": "bobs"}, headers=bob)
    mine = await create(http)
    sid = theirs["id"]
    for method, path, body in [
        ("GET", f"/api/v1/schedules/{sid}", None),
        ("PATCH", f"/api/v1/schedules/{sid}", {"cron": "@daily"}),
        ("DELETE", f"/api/v1/schedules/{sid}", None),
        ("POST", f"/api/v1/schedules/{sid}/enable", None),
        ("POST", f"/api/v1/schedules/{sid}/disable", None),
        ("POST", f"/api/v1/schedules/{sid}/trigger", None),
        ("GET", f"/api/v1/schedules/{sid}/runs", None),
    ]:
        err = await error_of(await http.request(method, path, json=body), 404)
        assert err["message"] == f"schedule {sid} does not exist", (method, path)
    listed = await (await http.get("/api/v1/schedules")).json()
    assert [i["id"] for i in listed["items"]] == [mine["id"]]
    err = await error_of(await http.get("/api/v1/schedules", params={"user": "bob"}), 403)
    assert err["code"] == "forbidden"
    # ann's own name is fine as a filter
    assert (await http.get("/api/v1/schedules", params={"user": "ann"})).status == 200
    # nothing of bob's changed, and he made no job
    assert await (await http.get(f"/api/v1/schedules/{sid}", headers=bob)).json() == theirs
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_an_admin_sees_and_manages_every_schedule(http: TestClient[Any, Any],
                                                        pool: asyncpg.Pool[Any]) -> None:
    root = await bearer(pool, "root", "admin")
    ann = await create(http)
    bob = await create(http, OK, headers=await bearer(pool, "bob"))
    for_carol = await create(http, {**OK, "user": "carol", "job": {**JOB, "priority": 1000}},
                             headers=root)
    assert for_carol["user"] == "carol" and for_carol["job"]["priority"] == 1000
    everyone = await (await http.get("/api/v1/schedules", headers=root)).json()
    assert [i["id"] for i in everyone["items"]] == [ann["id"], bob["id"], for_carol["id"]]
    only_bob = await (await http.get("/api/v1/schedules", params={"user": "bob"},
                                     headers=root)).json()
    assert [i["id"] for i in only_bob["items"]] == [bob["id"]]
    paged = await (await http.get("/api/v1/schedules", params={"limit": 2},
                                  headers=root)).json()
    assert len(paged["items"]) == 2 and paged["next_cursor"] == str(bob["id"])
    rest = await (await http.get("/api/v1/schedules", params={
        "limit": 2, "cursor": paged["next_cursor"]}, headers=root)).json()
    assert [i["id"] for i in rest["items"]] == [for_carol["id"]] and rest["next_cursor"] is None
    disabled = await http.post(f"/api/v1/schedules/{bob['id']}/disable", headers=root)
    assert (await disabled.json())["disabled_reason"] == "disabled by root"
    assert (await http.delete(f"/api/v1/schedules/{ann['id']}", headers=root)).status == 204


async def test_disable_then_enable_resets_the_failure_streak(http: TestClient[Any, Any],
                                                             pool: asyncpg.Pool[Any]) -> None:
    s = await create(http)
    resp = await http.post(f"/api/v1/schedules/{s['id']}/disable")
    assert resp.status == 200
    off = await resp.json()
    assert not off["enabled"] and off["disabled_reason"] == "disabled by ann"
    assert off["next_run_at"] is None
    # disabling again keeps the first reason
    await pool.execute("UPDATE schedules SET consecutive_failures = 3, failure_count = 5, "
                       "disabled_reason = '3 consecutive failed runs' WHERE id = $1", s["id"])
    again = await (await http.post(f"/api/v1/schedules/{s['id']}/disable")).json()
    assert again["disabled_reason"] == "3 consecutive failed runs"
    before = datetime.now(UTC)
    resp = await http.post(f"/api/v1/schedules/{s['id']}/enable")
    assert resp.status == 200
    on = await resp.json()
    assert on["enabled"] and on["disabled_reason"] is None
    assert on["consecutive_failures"] == 0 and on["failure_count"] == 5
    assert when(on["next_run_at"]) == next_fire(s["cron"], s["timezone"], before)


async def test_trigger_makes_the_owners_job_and_forbid_refuses_a_second(
        http: TestClient[Any, Any], pool: asyncpg.Pool[Any]) -> None:
    root = await bearer(pool, "root", "admin")
    s = await create(http)
    # an admin triggers ann's schedule: the job is still ann's
    resp = await http.post(f"/api/v1/schedules/{s['id']}/trigger", headers=root)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    job, run = made["job"], made["run"]
    assert job["user"] == "ann" and job["schedule_id"] == s["id"] and job["state"] == "PENDING"
    assert job["name"] == "nightly-etl" and job["cpus"] == 2
    assert run["job_id"] == job["id"] and run["kind"] == "manual" and run["skipped"] is None
    assert run["schedule_id"] == s["id"] and run["state"] == "PENDING"
    shown = await (await http.get(f"/api/v1/jobs/{job['id']}")).json()
    assert shown["schedule_id"] == s["id"] and shown["user"] == "ann"
    assert shown["env"]["STAGE"] == "nightly"
    assert shown["env"]["SCNS_SCHEDULE_ID"] == str(s["id"])
    runs = await (await http.get(f"/api/v1/schedules/{s['id']}/runs")).json()
    assert [r["job_id"] for r in runs["items"]] == [job["id"]] and runs["next_cursor"] is None
    after = await (await http.get(f"/api/v1/schedules/{s['id']}")).json()
    assert after["last_job_id"] == job["id"] and after["run_count"] == 1
    assert after["next_run_at"] == s["next_run_at"]  # a manual run leaves the cron times alone
    # forbid: the PENDING job is an active run, so a second trigger is refused
    err = await error_of(await http.post(f"/api/v1/schedules/{s['id']}/trigger"), 409)
    assert err["code"] == "run_active" and f"job {job['id']}" in err["message"]
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1
    runs = await (await http.get(f"/api/v1/schedules/{s['id']}/runs")).json()
    assert runs["items"][0]["skipped"] and runs["items"][0]["job_id"] is None
    assert [r["job_id"] for r in runs["items"]][1:] == [job["id"]]
    page = await (await http.get(f"/api/v1/schedules/{s['id']}/runs",
                                 params={"limit": 1})).json()
    assert len(page["items"]) == 1 and page["next_cursor"] == str(runs["items"][0]["id"])
    older = await (await http.get(f"/api/v1/schedules/{s['id']}/runs",
                                  params={"limit": 1, "cursor": page["next_cursor"]})).json()
    assert [r["job_id"] for r in older["items"]] == [job["id"]]
    # jobs made by a schedule are listed by it, and outlive it
    listed = await (await http.get("/api/v1/jobs", params={"schedule_id": s["id"]})).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert (await http.delete(f"/api/v1/schedules/{s['id']}")).status == 204
    kept = await (await http.get(f"/api/v1/jobs/{job['id']}")).json()
    assert kept["state"] == "PENDING" and kept["schedule_id"] is None


async def test_trigger_with_allow_makes_a_second_job(http: TestClient[Any, Any]) -> None:
    s = await create(http, {**OK, "concurrency": "allow"})
    ids = []
    for _ in range(2):
        resp = await http.post(f"/api/v1/schedules/{s['id']}/trigger")
        assert resp.status == 201
        ids.append((await resp.json())["job"]["id"])
    assert len(set(ids)) == 2


async def test_the_stored_job_round_trips_as_a_post_jobs_body(http: TestClient[Any, Any]
                                                              ) -> None:
    s = await create(http, {**OK, "job": {**JOB, "priority": 7, "nice": 3, "retries": 2,
                                          "array": "0-3%2", "error": "/tmp/e"}})
    job = s["job"]
    assert (job["priority"], job["nice"], job["array"], job["error"]) == (7, 3, "0-3%2", "/tmp/e")
    # what GET shows is a valid POST /jobs body and job, unchanged
    submitted = await http.post("/api/v1/jobs", data=orjson.dumps(job),
                                headers={"Content-Type": "application/json"})
    assert submitted.status == 201, await submitted.text()
    again = await http.patch(f"/api/v1/schedules/{s['id']}", json={"job": job})
    assert again.status == 200 and (await again.json())["job"] == job


def test_the_documented_bodies_are_the_validators() -> None:
    schemas = openapi.spec()["components"]["schemas"]
    assert set(schemas["ScheduleRequest"]["properties"]) == validation.SCHEDULE_FIELDS
    assert set(schemas["ScheduleChanges"]["properties"]) == validation.SCHEDULE_PATCHABLE
    assert set(schemas["ScheduleJob"]["properties"]) == \
        validation.FIELDS - set(validation.SCHEDULE_JOB_REFUSED)
    for name in ("ScheduleRequest", "ScheduleChanges", "ScheduleJob"):
        assert schemas[name]["additionalProperties"] is False
    assert schemas["ScheduleRequest"]["required"] == ["cron", "job", "name"]
