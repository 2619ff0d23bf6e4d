"""Job controls: cancel, hold, release, requeue, update (scancel / scontrol), and accounting.

Each is one call to the lifecycle module, which says why a control does not apply: the job does
not exist (404), or is in a state the control is not for (409, naming the state and what would
work).
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.common import (
    Gateway,
    Target,
    attempt_json,
    error,
    job_json,
    json,
    read_json,
    role_of,
    state,
    target,
)
from services.gateway.jobs import largest_worker
from services.gateway.partitions import check_change
from services.gateway.validation import RequestError, check_fits, parse_changes
from shared.db.jobs import Job
from shared.errors import InvalidTransition, NotAllowed, NotFound
from shared.states import JobState

routes = web.RouteTableDef()


def _answer(job: Job, *, accepted: bool = False) -> web.Response:
    """200 when done; 202 when the job's executor has been asked to do it (a RUNNING job)."""
    return json(job_json(job), status=202 if accepted else 200)


ARRAY_VERBS = ("cancel", "hold", "release")
NOTHING_TO_DO = {"cancel": "has no element left to cancel",
                 "hold": "has no pending element to hold",
                 "release": "has no held element to release"}


async def _array_control(g: Gateway, array_id: int, verb: str) -> web.Response:
    """The array's id: every element at once, one statement per step."""
    if verb == "cancel":
        change = await g.lifecycle.cancel_array(array_id)
    elif verb == "hold":
        change = await g.lifecycle.hold_array(array_id)
    else:
        change = await g.lifecycle.release_array(array_id)
    if change.count == 0 and change.stopping == 0:
        return error(409, "conflict", f"array {array_id} {NOTHING_TO_DO[verb]}")
    return json({"array_job_id": array_id, "count": change.count, "stopping": change.stopping},
                status=202 if change.stopping else 200)


def _one_element(t: Target, verb: str) -> None:
    if t.whole_array:
        raise RequestError(400, "array_id", f"job {t.job.id} is an array: {verb} one element "
                           f"at a time ({t.job.id}_{t.job.array_task_id}, …)")


async def _control(request: web.Request, verb: str) -> web.Response:
    g = state(request)
    t = await target(request)
    if t.whole_array and verb in ARRAY_VERBS:
        return await _array_control(g, t.job.id, verb)
    _one_element(t, verb)
    job_id = t.job.id
    try:
        if verb == "cancel":
            job = await g.lifecycle.cancel(job_id)
        elif verb == "hold":
            job = await g.lifecycle.hold(job_id)
        elif verb == "release":
            job = await g.lifecycle.release(job_id)
        else:
            job = await g.lifecycle.requeue(job_id)
    except NotFound as e:
        return error(404, "not_found", str(e))
    except InvalidTransition as e:
        return error(409, "conflict", str(e))
    return _answer(job, accepted=verb in ("cancel", "requeue") and job.state is JobState.RUNNING)


@routes.delete("/api/v1/jobs/{job_id}")
async def cancel(request: web.Request) -> web.Response:
    """A job that has not started is cancelled at once (200); a running one is signalled
    through its executor (202, then CANCELLED once it has stopped)."""
    return await _control(request, "cancel")


@routes.post("/api/v1/jobs/{job_id}/hold")
async def hold(request: web.Request) -> web.Response:
    return await _control(request, "hold")


@routes.post("/api/v1/jobs/{job_id}/release")
async def release(request: web.Request) -> web.Response:
    return await _control(request, "release")


@routes.post("/api/v1/jobs/{job_id}/requeue")
async def requeue(request: web.Request) -> web.Response:
    """A finished job: a new PENDING attempt now (200). A running one: stopped by its executor,
    then a new attempt (202)."""
    return await _control(request, "requeue")


@routes.patch("/api/v1/jobs/{job_id}")
async def update(request: web.Request) -> web.Response:
    g = state(request)
    t = await target(request)
    _one_element(t, "update")
    job_id = t.job.id
    changes = parse_changes(await read_json(request))
    cpus, mem = await largest_worker(request)
    check_fits(cpus=changes.cpus, memory_mb=changes.memory_mb, largest_cpus=cpus,
               largest_memory_mb=mem)
    await check_change(request, t.job, changes)
    try:
        job = await g.lifecycle.update(job_id, changes, role=role_of(request))
    except NotFound as e:
        return error(404, "not_found", str(e))
    except InvalidTransition as e:
        return error(409, "conflict", str(e))
    except NotAllowed as e:
        raise RequestError(403, "forbidden", str(e)) from e
    return _answer(job)


@routes.get("/api/v1/jobs/{job_id}/attempts")
async def attempts(request: web.Request) -> web.Response:
    """Accounting (like sacct): one item per attempt that was placed."""
    g = state(request)
    job = (await target(request)).job
    items = [attempt_json(a) for a in await g.jobs.attempts(job.id)]
    return json({"items": items, "next_cursor": None, "job": job_json(job)})
