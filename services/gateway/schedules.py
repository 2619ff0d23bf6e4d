"""Schedule endpoints: cron schedules that make jobs (the scheduler fires them; see
shared/lifecycle/firing.py). Owner-scoped in SQL: another user's schedule is a 404, as their
jobs are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from services.gateway.common import iso, job_json, json, principal, read_json, role_of, state
from services.gateway.jobs import largest_worker
from services.gateway.partitions import admit
from services.gateway.throttle import listing_turn, page_limit
from services.gateway.validation import (
    NAME_RULE,
    SCHEDULE_ID,
    SCHEDULE_NAME,
    RequestError,
    ScheduleBody,
    parse_schedule,
    query_id,
)
from shared import clock
from shared.arrays import SpecError
from shared.cron import CronError, next_fire
from shared.db.schedules import NewSchedule, Run, Schedule, ScheduleStore, job_to_json
from shared.errors import NotAllowed, NotFound
from shared.lifecycle import check_nice, check_priority
from shared.lifecycle.firing import Firing
from shared.wiring import Wiring

routes = web.RouteTableDef()

FIRING = web.AppKey("firing", Firing)
RECENT_RUNS = 10  # runs looked at to find the one a trigger made
# the stored job (job_to_json) -> the POST /jobs field it came from
_JOB_API_NAMES = {"time_limit_s": "time_limit", "stdout_path": "output",
                  "stderr_path": "error"}


def firing(wiring: Wiring) -> Firing:
    """The app's one Firing (POST /schedules/{id}/trigger), from the process's settings."""
    s = wiring.settings
    return Firing(wiring.lifecycle, max_catchup=s.cron_max_catchup, grace_s=s.cron_grace_s,
                  max_array_size=s.max_array_size)


# --- JSON ------------------------------------------------------------------------------------
def schedule_job_json(job: Mapping[str, Any], *, full: bool = True) -> dict[str, Any]:
    """A stored job spec under the names POST /jobs takes, so that it can be sent back as one
    (`priority` is the one asked for: the stored one has `nice` taken off already). Listings
    leave out the script and the environment, as GET /jobs does."""
    out: dict[str, Any] = {}
    for key, value in job.items():
        if not full and key in ("script", "env"):
            continue
        out[_JOB_API_NAMES.get(key, key)] = value
    if isinstance(out.get("priority"), int) and isinstance(out.get("nice"), int):
        out["priority"] += out["nice"]
    return out


def schedule_json(s: Schedule, *, full: bool = True) -> dict[str, Any]:
    """A schedule as the API shows it. `next_run_at` is null while it is disabled (it will
    not fire then; enabling it computes the next fire time from that moment)."""
    return {
        "id": s.id, "name": s.name, "user": s.user, "cron": s.cron, "timezone": s.timezone,
        "job": schedule_job_json(s.job, full=full), "concurrency": s.concurrency,
        "catch_up": s.catch_up, "max_failures": s.max_failures, "enabled": s.enabled,
        "disabled_reason": s.disabled_reason,
        "next_run_at": iso(s.next_run_at) if s.enabled else None,
        "last_run_at": iso(s.last_run_at), "last_job_id": s.last_job_id,
        "run_count": s.run_count, "failure_count": s.failure_count,
        "consecutive_failures": s.consecutive_failures, "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }


def run_json(r: Run) -> dict[str, Any]:
    return {"id": r.id, "schedule_id": r.schedule_id, "fire_at": iso(r.fire_at),
            "kind": r.kind, "job_id": r.job_id, "state": r.state, "skipped": r.skipped,
            "created_at": iso(r.created_at)}


# --- helpers ---------------------------------------------------------------------------------
def _store(request: web.Request) -> ScheduleStore:
    return ScheduleStore(state(request).pool)


def schedule_id(request: web.Request) -> int:
    """The `{schedule_id}` of the path: digits (no sign, no leading zero), else a 400."""
    raw = request.match_info["schedule_id"]
    if not SCHEDULE_ID.fullmatch(raw):
        raise RequestError(400, "invalid_id", f"a schedule id is a positive integer (digits), "
                                              f"got {raw[:40]!r}")
    return int(raw)


def _not_found(sid: int) -> RequestError:
    return RequestError(404, "not_found", f"schedule {sid} does not exist")


async def _schedule(request: web.Request) -> Schedule:
    """The schedule the path names, if the caller may see it (else a 404)."""
    sid = schedule_id(request)
    s = await _store(request).get(sid, owner=principal(request).owner)
    if s is None:
        raise _not_found(sid)
    return s


def _next_run(cron: str, timezone: str, now: datetime) -> datetime:
    try:
        return next_fire(cron, timezone, now)
    except CronError as e:
        raise RequestError(400, "invalid_cron", f"'cron': {e}") from e


def _check_role(request: web.Request, parsed: ScheduleBody) -> None:
    """What POST /jobs checks against the caller's role: priority and nice (403)."""
    if parsed.job is None:
        return
    try:
        check_priority(parsed.job.priority + parsed.job.nice, role_of(request))
        check_nice(parsed.job.nice, role_of(request))
    except NotAllowed as e:
        raise RequestError(403, "forbidden", f"job: {e}") from e


async def _taken(request: web.Request, user: str, name: str) -> RequestError:
    other = await _store(request).by_name(user, name)
    which = f" (schedule {other.id})" if other is not None else ""
    mine = user == principal(request).user
    return RequestError(409, "name_taken",
                        f"{'you already have' if mine else f'{user} already has'} a schedule "
                        f"named {name!r}{which}; pick another name, or change that one")


# --- routes ----------------------------------------------------------------------------------
@routes.post("/api/v1/schedules")
async def create(request: web.Request) -> web.Response:
    """A new schedule of the caller's (an admin may give `user` to make it for someone else).
    Its jobs are validated now, as POST /jobs would; each fire makes one."""
    g = state(request)
    who = principal(request)
    body = await read_json(request)
    cpus, mem = await largest_worker(request)
    parsed = parse_schedule(body, user=who.user, largest_cpus=cpus, largest_memory_mb=mem,
                            max_array_size=g.wiring.settings.max_array_size)
    owner = parsed.user or who.user
    if owner != who.user and not who.admin:
        raise RequestError(403, "forbidden", f"users make their own schedules only (you are "
                                             f"{who.user}); leave 'user' out")
    _check_role(request, parsed)
    assert parsed.job is not None  # POST requires it
    await admit(request, replace(parsed.job, user=owner), pending=False)
    next_run = _next_run(parsed.cron, parsed.timezone, clock.utcnow()) if parsed.enabled \
        else None
    made = await _store(request).create(NewSchedule(
        name=parsed.name, user=owner, cron=parsed.cron, timezone=parsed.timezone,
        job=parsed.job, enabled=parsed.enabled, concurrency=parsed.concurrency,
        catch_up=parsed.catch_up, max_failures=parsed.max_failures), next_run_at=next_run)
    if made is None:
        raise await _taken(request, owner, parsed.name)
    return json(schedule_json(made), status=201)


@routes.get("/api/v1/schedules")
async def list_schedules(request: web.Request) -> web.Response:
    """By id (cursor: the last id of the previous page). A user lists their own; an admin
    everyone's, or one user's with `?user=`. Items leave out the job's script and env."""
    q = request.query
    limit = page_limit(request)
    who = principal(request)
    user = _query_name(q, "user")
    if not who.admin:
        if user is not None and user != who.user:
            raise RequestError(403, "forbidden", "users list their own schedules only "
                                                 f"(you are {who.user})")
        user = who.user
    async with listing_turn(request):
        found = await _store(request).page(owner=user, name=_query_name(q, "name"),
                                           after_id=query_id(q, "cursor"), limit=limit + 1)
    items = found[:limit]
    next_cursor = str(items[-1].id) if len(found) > limit else None
    return json({"items": [schedule_json(s, full=False) for s in items],
                 "next_cursor": next_cursor})


def _query_name(query: Mapping[str, str], key: str) -> str | None:
    """A user or schedule name in the query string (both: NAME_RULE)."""
    value = query.get(key)
    if not value:
        return None
    if not SCHEDULE_NAME.fullmatch(value):
        raise RequestError(400, "invalid_query", f"'{key}' must be {NAME_RULE}, got "
                                                 f"{value[:70]!r}")
    return value


@routes.get("/api/v1/schedules/{schedule_id}")
async def show(request: web.Request) -> web.Response:
    return json(schedule_json(await _schedule(request)))


@routes.patch("/api/v1/schedules/{schedule_id}")
async def update(request: web.Request) -> web.Response:
    """Change any of name, cron, timezone, job (replaced whole: a POST /jobs body),
    concurrency, catch_up, max_failures. The result is validated as a whole, like a POST; a
    new expression or zone moves the next fire time (of an enabled schedule). Jobs already
    made are not changed."""
    g = state(request)
    s = await _schedule(request)
    body = await read_json(request)
    cpus, mem = await largest_worker(request)
    current = {"name": s.name, "cron": s.cron, "timezone": s.timezone,
               "concurrency": s.concurrency, "catch_up": s.catch_up,
               "max_failures": s.max_failures}
    parsed = parse_schedule(body, user=s.user, largest_cpus=cpus, largest_memory_mb=mem,
                            max_array_size=g.wiring.settings.max_array_size, current=current)
    _check_role(request, parsed)
    if parsed.job is not None:
        await admit(request, replace(parsed.job, user=s.user), pending=False)
    moved = (parsed.cron, parsed.timezone) != (s.cron, s.timezone)
    next_run = _next_run(parsed.cron, parsed.timezone, clock.utcnow()) \
        if moved and s.enabled else None
    job = job_to_json(parsed.job) if parsed.job is not None else s.job
    try:
        changed = await _store(request).update(
            s.id, owner=principal(request).owner, name=parsed.name, cron=parsed.cron,
            timezone=parsed.timezone, job=job, concurrency=parsed.concurrency,
            catch_up=parsed.catch_up, max_failures=parsed.max_failures, next_run_at=next_run)
    except asyncpg.UniqueViolationError:
        raise await _taken(request, s.user, parsed.name) from None
    if changed is None:  # deleted meanwhile
        raise _not_found(s.id)
    return json(schedule_json(changed))


@routes.delete("/api/v1/schedules/{schedule_id}")
async def delete(request: web.Request) -> web.Response:
    """Delete a schedule and its run history. The jobs it made are left alone: pending and
    running ones carry on (cancel them with DELETE /jobs/{id}); they lose their schedule_id."""
    sid = schedule_id(request)
    if not await _store(request).delete(sid, owner=principal(request).owner):
        raise _not_found(sid)
    return web.Response(status=204)


@routes.post("/api/v1/schedules/{schedule_id}/enable")
async def enable(request: web.Request) -> web.Response:
    """Fire again: from the next fire time after now (times missed while disabled are not
    caught up); the failure streak and the disabled reason are cleared."""
    s = await _schedule(request)
    try:
        next_run = next_fire(s.cron, s.timezone, clock.utcnow())
    except CronError as e:  # stored before a tzdata or parser change
        raise RequestError(409, "invalid_cron", f"schedule {s.id} cannot be enabled: {e}; "
                                                "PATCH its cron or timezone") from e
    enabled = await _store(request).enable(s.id, owner=principal(request).owner,
                                           next_run_at=next_run)
    if enabled is None:
        raise _not_found(s.id)
    return json(schedule_json(enabled))


@routes.post("/api/v1/schedules/{schedule_id}/disable")
async def disable(request: web.Request) -> web.Response:
    """Stop firing (jobs already made carry on). Disabling a disabled schedule changes nothing,
    its reason included."""
    s = await _schedule(request)
    if not s.enabled:
        return json(schedule_json(s))
    who = principal(request)
    disabled = await _store(request).disable(s.id, owner=who.owner,
                                             reason=f"disabled by {who.user}")
    if disabled is None:
        raise _not_found(s.id)
    return json(schedule_json(disabled))


@routes.post("/api/v1/schedules/{schedule_id}/trigger")
async def trigger(request: web.Request) -> web.Response:
    """One run now (a disabled schedule too), under the schedule's concurrency policy: with
    `forbid` and a run still active, nothing is made and the answer is a 409 that says which
    job is in the way. The cron fire times are not moved."""
    sid = schedule_id(request)
    g = state(request)
    try:
        fire = await request.app[FIRING].trigger(sid, owner=principal(request).owner)
    except NotFound as e:
        raise _not_found(sid) from e
    except SpecError as e:  # the stored job no longer fits this cluster's limits
        raise RequestError(409, "invalid_job", f"schedule {sid}'s job cannot be made: {e}; "
                                               "PATCH its job") from e
    if fire.job_id is None:
        raise RequestError(409, "run_active", fire.skipped or "the run was skipped")
    runs = await _store(request).runs(sid, limit=RECENT_RUNS)
    run = next((run_json(r) for r in runs if r.job_id == fire.job_id), {
        "id": None, "schedule_id": sid, "fire_at": iso(fire.fire_at), "kind": fire.kind,
        "job_id": fire.job_id, "state": "PENDING", "skipped": None, "created_at": None})
    job = await g.jobs.get(fire.job_id)
    out = job_json(job) if job is not None else None
    if job is not None and job.array_job_id == job.id:  # as POST /jobs answers an array
        summary = await g.jobs.array_summary(job.id)
        if summary is not None and out is not None:
            out["array"] = {"id": summary.id, "spec": summary.spec,
                            "throttle": summary.throttle, "count": summary.count}
    return json({"run": run, "job": out}, status=201)


@routes.get("/api/v1/schedules/{schedule_id}/runs")
async def runs(request: web.Request) -> web.Response:
    """Newest first (cursor: the last run id of the previous page). A run's state is its
    job's: the current one until the job has ended, then the final one."""
    q = request.query
    limit = page_limit(request)
    before = query_id(q, "cursor")
    s = await _schedule(request)
    async with listing_turn(request):
        found = await _store(request).runs(s.id, before_id=before, limit=limit + 1)
    items = found[:limit]
    next_cursor = str(items[-1].id) if len(found) > limit else None
    return json({"items": [run_json(r) for r in items], "next_cursor": next_cursor})
