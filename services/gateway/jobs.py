"""Job endpoints: submit, list, show, output. (Controls are in control.py.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.gateway.common import (
    LongResponse,
    client_gone,
    iso,
    job_json,
    json,
    principal,
    read_json,
    role_of,
    state,
    target,
    user_of,
)
from services.gateway.follow import JobProgress
from services.gateway.partitions import admit, live_members
from services.gateway.throttle import (
    BODY_BYTES_PER_REQUEST,
    THROTTLE,
    charge,
    listing_turn,
    page_limit,
)
from services.gateway.validation import (
    RequestError,
    parse_submission,
    query_id,
    query_int,
    query_text,
    query_time,
)
from shared.db import UNAVAILABLE
from shared.db.jobs import JobSpec, Page
from shared.errors import IdempotencyConflict, NotAllowed, NotFound
from shared.lifecycle import check_nice, check_priority
from shared.output import read_output
from shared.states import JobState

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_KEY = 255
MAX_OFFSET = 1 << 36  # a log's `offset` (bytes a client already has): 64 GiB, 11 digits
FOLLOW_POLL_S = 0.5  # a followed log is read again this often (and the client checked)
JOB_PROGRESS = web.AppKey("job_progress", JobProgress)  # shared by every follow


async def largest_worker(request: web.Request) -> tuple[int | None, int | None]:
    """The biggest live worker's CPUs and memory (from the members cached for a second)."""
    members = await live_members(request)
    return (max((m.cpus for m in members), default=None),
            max((m.memory_mb for m in members), default=None))


@routes.post("/api/v1/jobs")
async def submit(request: web.Request) -> web.Response:
    g = state(request)
    charge(request, (request.content_length or 0) // BODY_BYTES_PER_REQUEST, "a large body")
    body = await read_json(request)
    cpus, mem = await largest_worker(request)
    spec = parse_submission(body, user=user_of(request), largest_cpus=cpus,
                            largest_memory_mb=mem,
                            max_array_size=g.wiring.settings.max_array_size)
    spec = await admit(request, spec)
    try:
        check_priority(spec.priority + spec.nice, role_of(request))
        check_nice(spec.nice, role_of(request))
    except NotAllowed as e:
        raise RequestError(403, "forbidden", str(e)) from e
    key = _idempotency_key(request)
    try:  # durable before the 201; a retry returns the job the first request made
        if request.query.get("test_only") in ("1", "true", "yes"):
            await g.lifecycle.dependency_targets(spec)
            return json({"test_only": True, "job": spec_json(spec),
                         "array_count": spec.array.count if spec.array else None})
        job, created = await g.lifecycle.submit(spec, idempotency_key=key)
    except IdempotencyConflict as e:
        raise RequestError(409, "idempotency_conflict", str(e)) from e
    except NotFound as e:
        raise RequestError(400, "unknown_dependency", str(e)) from e
    out = job_json(job)
    if spec.array is not None:
        out["array"] = {"id": job.id, "spec": spec.array.spec, "throttle": spec.array.throttle,
                        "count": spec.array.count}
    resp = json(out, status=201 if created else 200)
    if not created:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def spec_json(spec: JobSpec) -> dict[str, Any]:
    """What a submission would create (`?test_only=1`, like sbatch --test-only)."""
    return {
        "id": None, "name": spec.name, "user": spec.user, "state": "PENDING",
        "cpus": spec.cpus, "memory_mb": spec.memory_mb, "time_limit": spec.time_limit_s,
        "priority": spec.priority, "requeue": spec.requeue, "hold": spec.hold,
        "retries": spec.retries, "retry_delay_s": spec.retry_delay_s,
        "array": spec.array.spec if spec.array else None, "dependency": spec.dependency,
        "begin_at": iso(spec.begin_at), "submit_dir": spec.submit_dir, "workdir": spec.workdir,
        "output": spec.stdout_path, "error": spec.stderr_path, "env": dict(spec.env),
    }


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable() or not key.isascii():
        raise RequestError(400, "invalid_idempotency_key",
                           f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")
    return key


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """Newest first. Listings never carry a job's script or environment."""
    q = request.query
    states = [s.strip().upper() for s in q.get("state", "").split(",") if s.strip()]
    bad = [s for s in states if s not in JobState.__members__]
    if bad:
        raise RequestError(400, "invalid_query", f"unknown state(s) {', '.join(bad)[:200]}; "
                                                 f"use {', '.join(JobState.__members__)}")
    limit = page_limit(request)
    who = principal(request)
    user = query_text(q, "user")
    if not who.admin:  # a user's listing is theirs, in SQL
        if user is not None and user != who.user:
            raise RequestError(403, "forbidden", "users list their own jobs only "
                                                 f"(you are {who.user})")
        user = who.user
    page = Page(states=states or None, user=user, name=query_text(q, "name"),
                before_id=query_id(q, "cursor"), since=query_time(q, "since"),
                until=query_time(q, "until"), array_job_id=query_id(q, "array_job_id"),
                schedule_id=query_id(q, "schedule_id"), limit=limit + 1)
    async with listing_turn(request):
        rows = await state(request).jobs.page_rows(page)
    items = [dict(r) for r in rows[:limit]]  # the query names and orders them as job_json
    next_cursor = str(items[-1]["id"]) if len(rows) > limit else None
    return json({"items": items, "next_cursor": next_cursor})


@routes.get("/api/v1/jobs/{job_id}")
async def show(request: web.Request) -> web.Response:
    t = await target(request)
    out = job_json(t.job, full=True)
    if t.whole_array:  # the array's id: its summary too (what `scns submit --wait` polls)
        summary = await state(request).jobs.array_summary(t.job.id)
        if summary is not None:
            out["array"] = {"id": summary.id, "spec": summary.spec,
                            "throttle": summary.throttle, "count": summary.count,
                            "states": summary.states}
    return json(out)


@routes.get("/api/v1/jobs/{job_id}/log")
async def output(request: web.Request) -> web.StreamResponse:
    """An attempt's output; with `follow`, streamed until the job ends, the client goes away,
    or SCNS_FOLLOW_MAX_S passes (the response then ends as if the job had). `offset` skips the
    bytes a client already has: a follow that ended before the job did resumes where it was."""
    g = state(request)
    stream = request.query.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise RequestError(400, "invalid_query", "stream must be stdout or stderr")
    follow = request.query.get("follow") in ("1", "true", "yes")
    skip = Skip(query_int(request.query, "offset", default=0, low=0, high=MAX_OFFSET))
    if not follow:
        job = (await target(request)).job
        attempt = query_int(request.query, "attempt", default=job.attempt, low=1,
                            high=1_000_000)
        text, _, _ = await read_output(g.redis, g.keys, job_id=job.id, attempt=attempt,
                                       stream=stream)
        return web.Response(body=skip(text), content_type="text/plain", charset="utf-8")
    throttle = request.app[THROTTLE]
    # the slot first: a follow refused (429/503) costs no database or Redis read
    with throttle.streams.hold(principal(request).token_id):
        job = (await target(request)).job
        attempt = query_int(request.query, "attempt", default=job.attempt, low=1,
                            high=1_000_000)
        text, last, eof = await read_output(g.redis, g.keys, job_id=job.id, attempt=attempt,
                                            stream=stream)
        resp = LongResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        try:
            await resp.write(skip(text))
            if not eof:
                await _follow(request, resp, job_id=job.id, attempt=attempt, stream=stream,
                              after=last, within_s=throttle.follow_max_s, skip=skip)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away: nothing to tell it
        except RedisError as e:  # the headers are sent: end the text here
            _follow_broke(job.id, e)
        except UNAVAILABLE as e:
            _follow_broke(job.id, e)
        return resp


def _follow_broke(job_id: int, e: BaseException) -> None:
    log.warning("log follow of job %s ended: %s", job_id, e,
                extra={"event": "follow-ended", "job_id": job_id})


class Skip:
    """The first `n` bytes of a text, dropped across the pieces it comes in."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, text: str) -> bytes:
        data = text.encode()
        if self.n:
            cut = min(self.n, len(data))
            data, self.n = data[cut:], self.n - cut
        return data


async def _follow(request: web.Request, resp: web.StreamResponse, *, job_id: int, attempt: int,
                  stream: str, after: str, within_s: float, skip: Skip) -> None:
    """Write what the attempt adds to `stream` after entry `after` until its end, the client's
    departure, or `within_s` seconds."""
    g = state(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not client_gone(request):
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(FOLLOW_POLL_S, left))
        if client_gone(request):
            return
        more, after, eof = await read_output(g.redis, g.keys, job_id=job_id, attempt=attempt,
                                             stream=stream, after=after)
        if more and (data := skip(more)):
            await resp.write(data)
        if eof:
            return
        if not more and await request.app[JOB_PROGRESS].ended(job_id, attempt):
            return  # output is shipped before the end is recorded: a finished job has no more
