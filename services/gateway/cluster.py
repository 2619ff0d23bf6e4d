"""Cluster endpoints: workers, drain/resume, resources, queue statistics."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from services.gateway.common import error, iso, json, require_admin, state
from shared.db import UNAVAILABLE
from shared.db.workers import WorkerStore, from_ms
from shared.states import JobState, PendingReason, WorkerState

routes = web.RouteTableDef()


@routes.get("/api/v1/resources")
async def resources(request: web.Request) -> web.Response:
    """Straight from Redis: four counters in one round trip."""
    g = state(request)
    k = g.keys
    total, allocated, total_mem, allocated_mem = await g.redis.mget(
        k.total_cpus, k.allocated_cpus, k.total_memory_mb, k.allocated_memory_mb)
    t, a = int(total or 0), int(allocated or 0)
    tm, am = int(total_mem or 0), int(allocated_mem or 0)
    return json({"total_cpus": t, "allocated_cpus": a, "available_cpus": max(t - a, 0),
                 "utilization": round(a / t, 4) if t else 0.0,
                 "total_memory_mb": tm, "allocated_memory_mb": am,
                 "available_memory_mb": max(tm - am, 0)})


@routes.get("/api/v1/workers")
async def workers(request: web.Request) -> web.Response:
    g = state(request)
    degraded = False
    try:
        rows = {w.id: w for w in await WorkerStore(g.pool).list()}
    except UNAVAILABLE:
        rows, degraded = {}, True  # PostgreSQL away: what Redis knows still answers
    observed = {o.worker_id: o for o in await g.membership.observe()}
    ids = sorted(set(rows) | {w for w, o in observed.items() if o.member is not None})
    usage = await g.allocator.usage(ids)
    items: list[dict[str, Any]] = []
    for wid in ids:
        row, o = rows.get(wid), observed.get(wid)
        member = o.member if o else None
        lease = o.lease if o else None
        item: dict[str, Any] = {
            "id": wid,
            "state": member.state if member else (row.state if row else WorkerState.DOWN),
            "cpus": member.cpus if member else (row.cpus if row else 0),
            "memory_mb": member.memory_mb if member else (row.memory_mb if row else 0),
            "allocated_cpus": usage[wid].cpus,
            "allocated_memory_mb": usage[wid].memory_mb,
            "labels": dict(member.labels if member else (row.labels if row else {})),
            "hostname": member.hostname if member else (row.hostname if row else ""),
            "last_heartbeat": iso(from_ms(lease.heartbeat_at)) if lease and lease.heartbeat_at
            else iso(row.last_heartbeat if row else None),
            "drain": bool(row.drain) if row else False,
        }
        items.append(item)
    return json({"items": items, "next_cursor": None, "degraded": degraded})


async def _drain(request: web.Request, drain: bool) -> web.Response:
    require_admin(request)
    g = state(request)
    wid = request.match_info["worker_id"]
    store = WorkerStore(g.pool)
    if await g.membership.member(wid) is None and await store.get(wid) is None:
        return error(404, "not_found", f"worker {wid} is not known")
    after = await g.membership.set_drain(wid, drain)
    row = await store.set_drain(wid, drain)
    return json({"id": wid, "state": after or (row.state if row else WorkerState.DOWN),
                 "drain": drain})


@routes.post("/api/v1/workers/{worker_id}/drain")
async def drain(request: web.Request) -> web.Response:
    return await _drain(request, True)


@routes.post("/api/v1/workers/{worker_id}/resume")
async def resume(request: web.Request) -> web.Response:
    return await _drain(request, False)


@routes.post("/api/v1/admin/reconcile")
async def reconcile(request: web.Request) -> web.Response:
    """Ask the reconciler for a pass now and return its report (504 if none answers)."""
    require_admin(request)
    g = state(request)
    request_id = uuid.uuid4().hex
    listeners = await g.redis.publish(g.keys.wakeup("reconciler"), request_id)
    if not listeners:
        return error(503, "unavailable", "no reconciler is running")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = await g.redis.get(g.keys.reconcile_report(request_id))
        if raw:
            return json(orjson.loads(raw))
        await asyncio.sleep(0.1)
    return error(504, "timeout", "the reconciler did not report within 60 s")


@routes.get("/api/v1/queues/stats")
async def queue_stats(request: web.Request) -> web.Response:
    rows = await state(request).jobs.stats()
    by_state: dict[str, int] = {}
    pending: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for st, reason, n, c in rows:
        by_state[st] = by_state.get(st, 0) + n
        cpus[st] = cpus.get(st, 0) + c
        if st == JobState.PENDING:
            why = reason or PendingReason.PRIORITY
            pending[why] = pending.get(why, 0) + n
    return json({"states": by_state, "pending_reasons": pending, "cpus": cpus,
                 "window": "active jobs, and jobs finished in the last 24 hours"})
