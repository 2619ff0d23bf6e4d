"""Job endpoints: submit, list, show, cancel, output."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from redis.exceptions import RedisError

from services.gateway.common import (
    Gateway,
    error,
    job_json,
    json,
    path_int,
    read_json,
    state,
    user_of,
)
from services.gateway.validation import RequestError, parse_submission
from shared.db.jobs import Job, JobStore, QueueStore, cancel_unstarted, request_cancel
from shared.dispatch import Dispatch
from shared.errors import IdempotencyConflict
from shared.events import CancelRequested, JobFinished, JobSubmitted
from shared.output import read_output
from shared.states import JobState

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_PAGE = 1000
LARGEST_TTL_S = 1.0
MAX_KEY = 255


async def _largest_worker(request: web.Request) -> tuple[int | None, int | None]:
    """The biggest live worker's CPUs and memory (cached for a second)."""
    g = state(request)
    at, cpus, mem = g.largest
    if time.monotonic() - at > LARGEST_TTL_S:
        members = await g.membership.live_members()
        cpus = max((m.cpus for m in members), default=None)
        mem = max((m.memory_mb for m in members), default=None)
        g.largest = (time.monotonic(), cpus, mem)
    return cpus, mem


@routes.post("/api/v1/jobs")
async def submit(request: web.Request) -> web.Response:
    g = state(request)
    body = await read_json(request)
    cpus, mem = await _largest_worker(request)
    spec = parse_submission(body, user=user_of(request), largest_cpus=cpus,
                            largest_memory_mb=mem)
    key = _idempotency_key(request)
    try:  # durable before the 201
        job, created = await JobStore(g.pool).insert_once(spec, idempotency_key=key)
    except IdempotencyConflict as e:
        raise RequestError(409, "idempotency_conflict", str(e)) from e
    # a retry returns the job the first request made, announced again if it still waits
    if created or job.state is JobState.PENDING:
        await _announce(g, job)
    resp = json(job_json(job), status=201 if created else 200)
    if not created:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable() or not key.isascii():
        raise RequestError(400, "invalid_idempotency_key",
                           f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")
    return key


async def _announce(g: Gateway, job: Job) -> None:
    try:
        async with g.redis.pipeline(transaction=False) as pipe:
            g.bus.publish_in(pipe, JobSubmitted(job_id=job.id, cpus=job.cpus,
                                                memory_mb=job.memory_mb, priority=job.priority))
            pipe.publish(g.keys.wakeup("scheduler"), str(job.id))
            await pipe.execute()
    except RedisError as e:
        # The row is the truth; the scheduler's timer finds the job without the event.
        log.warning("job %s accepted but not announced: %s", job.id, e)


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    q = request.query
    states = [s.strip().upper() for s in q.get("state", "").split(",") if s.strip()]
    bad = [s for s in states if s not in JobState.__members__]
    if bad:
        raise RequestError(400, "invalid_query", f"unknown state(s) {', '.join(bad)}; use "
                                                 f"{', '.join(JobState.__members__)}")
    try:
        limit = int(q.get("limit", "100"))
        cursor = int(q["cursor"]) if q.get("cursor") else None
    except ValueError as e:
        raise RequestError(400, "invalid_query", "limit and cursor must be integers") from e
    if not 1 <= limit <= MAX_PAGE:
        raise RequestError(400, "invalid_query", f"limit must be between 1 and {MAX_PAGE}")
    jobs = await QueueStore(state(request).pool).page(
        states=states or None, user=q.get("user") or None, name=q.get("name") or None,
        before_id=cursor, limit=limit + 1)
    items = jobs[:limit]
    next_cursor = str(items[-1].id) if len(jobs) > limit else None
    return json({"items": [job_json(j) for j in items], "next_cursor": next_cursor})


async def _get(request: web.Request) -> tuple[int, JobStore]:
    return path_int(request, "job_id"), JobStore(state(request).pool)


@routes.get("/api/v1/jobs/{job_id}")
async def show(request: web.Request) -> web.Response:
    job_id, store = await _get(request)
    job = await store.get(job_id)
    if job is None:
        return error(404, "not_found", f"job {job_id} does not exist")
    return json(job_json(job, with_script=True))


@routes.delete("/api/v1/jobs/{job_id}")
async def cancel(request: web.Request) -> web.Response:
    """A job that has not started is cancelled at once (200); a running one is signalled
    through its executor (202, then CANCELLED once it has stopped)."""
    g = state(request)
    job_id, store = await _get(request)
    job = await store.get(job_id)
    if job is None:
        return error(404, "not_found", f"job {job_id} does not exist")
    if job.state.terminal:
        return error(409, "already_finished", f"job {job_id} is already {job.state}")
    done = await cancel_unstarted(g.pool, job_id)
    if done is not None:
        if done.worker_id:  # it was ALLOCATED: give the capacity back, withdraw the launch
            await g.allocator.release(job_id=job_id, attempt=done.attempt,
                                      worker_id=done.worker_id)
            await g.dispatcher.withdraw(Dispatch(worker_id=done.worker_id, job_id=job_id,
                                                 attempt=done.attempt))
        await g.bus.publish(JobFinished(job_id=job_id, attempt=done.attempt,
                                        worker_id=done.worker_id, state=str(done.state)))
        await g.redis.publish(g.keys.wakeup("scheduler"), str(job_id))
        return json(job_json(done))
    running = await request_cancel(g.pool, job_id)
    if running is not None and running.worker_id:
        await g.bus.publish_to(g.keys.control(running.worker_id),
                               CancelRequested(job_id=job_id, attempt=running.attempt))
        return json(job_json(running), status=202)
    job = await store.get(job_id)  # it finished in the meantime
    if job is None:
        return error(404, "not_found", f"job {job_id} does not exist")
    return error(409, "already_finished", f"job {job_id} is already {job.state}")


@routes.get("/api/v1/jobs/{job_id}/log")
async def output(request: web.Request) -> web.StreamResponse:
    g = state(request)
    job_id, store = await _get(request)
    stream = request.query.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise RequestError(400, "invalid_query", "stream must be stdout or stderr")
    job = await store.get(job_id)
    if job is None:
        return error(404, "not_found", f"job {job_id} does not exist")
    attempt = job.attempt
    if request.query.get("attempt"):
        if not request.query["attempt"].isdigit():
            raise RequestError(400, "invalid_query", "attempt must be an integer")
        attempt = int(request.query["attempt"])
    follow = request.query.get("follow") in ("1", "true", "yes")
    text, last, eof = await read_output(g.redis, g.keys, job_id=job_id, attempt=attempt,
                                        stream=stream)
    if not follow:
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    await resp.write(text.encode())
    while not eof:
        await asyncio.sleep(0.5)
        more, last, eof = await read_output(g.redis, g.keys, job_id=job_id, attempt=attempt,
                                            stream=stream, after=last)
        if more:
            await resp.write(more.encode())
        if not eof and not more:
            # output is shipped before the end is recorded: a finished job has no more
            current = await store.get(job_id)
            if current is None or current.attempt != attempt or current.state.terminal:
                break
    await resp.write_eof()
    return resp
