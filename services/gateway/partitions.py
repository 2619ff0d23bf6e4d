"""Partitions, per-user limits and fair share: the admin's writes, everyone's reads, and the
checks a submission passes (its partitions, its user's pending-job limit)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from services.gateway.common import iso, json, principal, read_json, require_admin, state
from services.gateway.validation import (
    MAX_TIME_LIMIT_S,
    RequestError,
    check_fits,
    parse_partition,
)
from shared.db.jobs import Job, JobSpec
from shared.db.partitions import LimitStore, PartitionStore, ShareStore
from shared.db.workers import WorkerStore
from shared.lifecycle import Changes
from shared.membership import Member
from shared.partitions import NAME, Partition, PartitionError, check_submission, judge
from shared.priority import fair_share
from shared.states import JobState, WorkerState

routes = web.RouteTableDef()


def partition_json(p: Partition, members: list[Member], usage: Mapping[str, int],
                   down: list[str]) -> dict[str, Any]:
    mine = [m for m in members if p.selects(m.labels)]
    ready = [m for m in mine if m.state == WorkerState.READY]
    total = sum(m.cpus for m in ready)
    allocated = sum(usage.get(m.worker_id, 0) for m in ready)
    return {
        "name": p.name, "selector": dict(p.selector),
        "default_time_limit": p.default_time_limit, "max_time_limit": p.max_time_limit,
        "max_cpus_per_job": p.max_cpus_per_job, "tier": p.tier,
        "allowed_users": list(p.allowed_users) if p.allowed_users is not None else None,
        "default": p.default, "max_running_cpus_per_user": p.max_running_cpus_per_user,
        "max_pending_jobs_per_user": p.max_pending_jobs_per_user,
        "workers": sorted(m.worker_id for m in mine),
        "nodes": {"ready": len(ready), "draining": len(mine) - len(ready), "down": len(down)},
        "total_cpus": total, "allocated_cpus": allocated, "free_cpus": max(total - allocated, 0),
        "created_at": iso(p.created_at), "updated_at": iso(p.updated_at),
    }


async def _cluster(request: web.Request) -> tuple[list[Member], dict[str, int],
                                                 dict[str, Mapping[str, str]]]:
    """Live members, their allocated CPUs, and the labels of workers that are down."""
    g = state(request)
    members = await g.membership.live_members()
    usage = await g.allocator.usage([m.worker_id for m in members])
    live = {m.worker_id for m in members}
    down = {w.id: w.labels for w in await WorkerStore(g.pool).list() if w.id not in live}
    return members, {w: u.cpus for w, u in usage.items()}, down


async def _shown(request: web.Request, parts: list[Partition]) -> list[dict[str, Any]]:
    members, usage, down = await _cluster(request)
    return [partition_json(p, members, usage,
                           [w for w, labels in down.items() if p.selects(labels)])
            for p in parts]


def _store(request: web.Request) -> PartitionStore:
    return PartitionStore(state(request).pool)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME.match(name):
        raise RequestError(404, "not_found", f"partition {name[:80]!r} does not exist")
    return name


@routes.get("/api/v1/partitions")
async def list_partitions(request: web.Request) -> web.Response:
    parts = list((await _store(request).all()).values())
    return json({"items": await _shown(request, parts)})


@routes.post("/api/v1/partitions")
async def create_partition(request: web.Request) -> web.Response:
    require_admin(request)
    fields = parse_partition(await read_json(request), creating=True)
    p = Partition(**fields)
    made = await _store(request).create(p, state(request).pool)
    if made is None:
        raise RequestError(409, "exists", f"partition {p.name} already exists "
                                          f"(PATCH /partitions/{p.name} changes it)")
    state(request).partitions_at = float("-inf")
    return json((await _shown(request, [made]))[0], status=201)


@routes.get("/api/v1/partitions/{name}")
async def show_partition(request: web.Request) -> web.Response:
    name = _name(request)
    p = await _store(request).get(name)
    if p is None:
        raise RequestError(404, "not_found", f"partition {name} does not exist")
    return json((await _shown(request, [p]))[0])


@routes.patch("/api/v1/partitions/{name}")
async def update_partition(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    changes = parse_partition(await read_json(request), creating=False)
    if changes.get("default") is False:
        current = await _store(request).get(name)
        if current is not None and current.default:
            raise RequestError(409, "default", f"partition {name} is the default; make another "
                                               "one the default instead")
    p = await _store(request).update(name, changes, state(request).pool)
    if p is None:
        raise RequestError(404, "not_found", f"partition {name} does not exist")
    state(request).partitions_at = float("-inf")
    return json((await _shown(request, [p]))[0])


@routes.delete("/api/v1/partitions/{name}")
async def delete_partition(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    store = _store(request)
    p = await store.get(name)
    if p is None:
        raise RequestError(404, "not_found", f"partition {name} does not exist")
    used = await store.in_use(name)
    if used:
        raise RequestError(409, "in_use", f"{used} pending or running job(s) name partition "
                                          f"{name}; cancel them or wait for them to end first")
    if p.default:
        raise RequestError(409, "default", f"partition {name} is the default; make another "
                                           "one the default first")
    await store.delete(name)
    state(request).partitions_at = float("-inf")
    return web.Response(status=204)


# --- limits and fair share ---------------------------------------------------------------------
def _user(request: web.Request) -> str:
    name = request.match_info["name"]
    who = principal(request)
    if not who.admin and name != who.user:  # another user's limits are not theirs to see
        raise RequestError(404, "not_found", f"user {name[:80]} has no limits you can see")
    if not 1 <= len(name) <= 200:
        raise RequestError(400, "invalid_user", "a user name is 1 to 200 characters")
    return name


async def _limits_json(request: web.Request, user: str) -> dict[str, Any]:
    lim = await LimitStore(state(request).pool).get(user)
    return {"user": user, "max_running_cpus": lim.max_running_cpus,
            "max_pending_jobs": lim.max_pending_jobs, "shares": lim.shares,
            "running_cpus": lim.running_cpus, "pending_jobs": lim.pending_jobs}


@routes.get("/api/v1/users/{name}/limits")
async def get_limits(request: web.Request) -> web.Response:
    return json(await _limits_json(request, _user(request)))


LIMIT_FIELDS = ("max_running_cpus", "max_pending_jobs", "shares")


@routes.put("/api/v1/users/{name}/limits")
async def put_limits(request: web.Request) -> web.Response:
    require_admin(request)
    user = _user(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_body", "send a JSON object with any of "
                                                f"{', '.join(LIMIT_FIELDS)}")
    unknown = sorted(set(body) - set(LIMIT_FIELDS))
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; "
                                                 f"allowed: {', '.join(LIMIT_FIELDS)}")
    for key, value in body.items():
        nullable = key != "shares"
        if (value is None and not nullable) or (value is not None and (
                not isinstance(value, int) or isinstance(value, bool)
                or not 1 <= value <= 10**9)):
            also = " or null (no limit)" if nullable else ""
            raise RequestError(400, "invalid_field",
                               f"'{key}' must be an integer from 1 to 10^9{also}")
    store = LimitStore(state(request).pool)
    cur = await store.get(user)
    merged = {"max_running_cpus": cur.max_running_cpus,
              "max_pending_jobs": cur.max_pending_jobs, "shares": cur.shares, **body}
    await store.put(user, **merged)
    state(request).pending_limits_at = float("-inf")
    return json(await _limits_json(request, user))


@routes.get("/api/v1/share")
async def share(request: web.Request) -> web.Response:
    g = state(request)
    settings = g.wiring.settings
    rows = await ShareStore(g.pool).usage(settings.fairshare_half_life_s)
    table = fair_share({u.user: u.cpu_s for u in rows}, {u.user: u.shares for u in rows})
    updated = max((u.updated_at for u in rows if u.updated_at is not None), default=None)
    items = []
    for u in rows:
        r = table[u.user]
        items.append({"user": u.user, "usage_cpu_s": round(u.cpu_s, 3),
                      "running_cpus": u.running_cpus, "shares": u.shares,
                      "share": r.share, "usage_share": r.usage_share, "factor": r.factor})
    return json({"items": items, "half_life_s": settings.fairshare_half_life_s,
                 "updated_at": iso(updated), "weights": settings.weights.as_json()})


# --- what a submission passes ----------------------------------------------------------------
CACHE_S = 1.0  # what submissions are checked against may be this old (another gateway's change)


async def partitions_of(request: web.Request) -> dict[str, Partition]:
    """The partitions, cached for a second (a change made here clears the cache)."""
    g = state(request)
    if time.monotonic() - g.partitions_at > CACHE_S:
        g.partitions = await _store(request).all()
        g.partitions_at = time.monotonic()
    return g.partitions


async def live_members(request: web.Request) -> list[Member]:
    """The live workers, cached for a second."""
    g = state(request)
    if time.monotonic() - g.members_at > CACHE_S:
        g.members = await g.membership.live_members()
        g.members_at = time.monotonic()
    return g.members


async def pending_limit(request: web.Request, user: str) -> int | None:
    """`user`'s max_pending_jobs (the table of them cached for a second)."""
    g = state(request)
    if time.monotonic() - g.pending_limits_at > CACHE_S:
        g.pending_limits = await LimitStore(g.pool).pending_limits()
        g.pending_limits_at = time.monotonic()
    return g.pending_limits.get(user)


async def admit(request: web.Request, spec: JobSpec, *, pending: bool = True) -> JobSpec:
    """The submission with its partition list and time limit resolved; a 422 when no named
    partition can run it, a 409 past its user's pending-job limit."""
    parts = await partitions_of(request)
    try:
        names, limit = check_submission(spec.partition, parts, user=spec.user, cpus=spec.cpus,
                                        time_limit_s=spec.time_limit_s)
    except PartitionError as e:
        raise RequestError(422, "partition", str(e)) from e
    if limit is not None and limit > MAX_TIME_LIMIT_S:
        limit = MAX_TIME_LIMIT_S
    verdict = judge(names.split(","), parts, user=spec.user, cpus=spec.cpus,
                    time_limit_s=limit)
    members = await live_members(request)
    mine = [m for m in members if any(p.selects(m.labels) for p in verdict.eligible)]
    if mine:  # none live yet: the job may wait for one
        check_fits(cpus=spec.cpus, memory_mb=spec.memory_mb,
                   largest_cpus=max(m.cpus for m in mine),
                   largest_memory_mb=max(m.memory_mb for m in mine))
    if pending:
        await _partition_pending(request, spec, names.split(","), parts)
    if pending and await pending_limit(request, spec.user) is not None:
        room = await LimitStore(state(request).pool).pending_room(spec.user)
        count = spec.array.count if spec.array is not None else 1
        if room is not None and count > room:
            raise RequestError(409, "max_pending_jobs",
                               f"user {spec.user} may have {max(room, 0)} more pending job(s) "
                               f"(max_pending_jobs); this submission has {count}")
    return replace(spec, partition=names, time_limit_s=limit)


async def _partition_pending(request: web.Request, spec: JobSpec, names: list[str],
                             parts: Mapping[str, Partition]) -> None:
    """409 when a named partition's per-user pending-job limit would be passed (a job counts
    in every partition it names)."""
    count = spec.array.count if spec.array is not None else 1
    for name in names:
        p = parts.get(name)
        if p is None or p.max_pending_jobs_per_user is None:
            continue
        have = await _store(request).pending_of(spec.user, name)
        if have + count > p.max_pending_jobs_per_user:
            raise RequestError(409, "max_pending_jobs",
                               f"user {spec.user} may have {p.max_pending_jobs_per_user} "
                               f"pending job(s) in partition {name} and has {have}; this "
                               f"submission has {count}")


async def check_change(request: web.Request, job: Job, changes: Changes) -> None:
    """A 422 when `scontrol update` of a pending job's CPUs or time limit would leave none of
    its partitions able to run it (as at submit)."""
    if job.state is not JobState.PENDING or not changes.set & {"cpus", "time_limit_s"}:
        return  # a job past PENDING cannot be updated at all (the lifecycle's 409)
    cpus = changes.cpus if "cpus" in changes.set and changes.cpus is not None else job.cpus
    limit = changes.time_limit_s if "time_limit_s" in changes.set else job.time_limit_s
    v = judge((job.partition or "default").split(","), await partitions_of(request),
              user=job.user, cpus=cpus, time_limit_s=limit)
    if not v.eligible:
        raise RequestError(422, "partition", f"no partition of job {job.id} could run it so: "
                                             f"{v.message}")
