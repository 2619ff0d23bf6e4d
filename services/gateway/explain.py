"""`GET /jobs/{id}/explain`: every reason a pending job is not running, its priority factors,
and when it is expected to start.

The reasons are worked out now, not read from the job's reason column (which holds one, as of
the scheduler's last look): its own condition (held, a dependency, a begin time, an array's
throttle), each named partition that cannot run it, its user's running-CPU limit, no room on
its partitions' workers, jobs ahead of it. The estimate books the running jobs (until their time
limits run out) and the jobs ahead of it in score order on its workers (shared/estimate.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from aiohttp import web

from services.gateway.common import iso, json, state, target
from services.gateway.partitions import partitions_of
from shared import clock
from shared.db.jobs import MAX_PRIORITY, Job
from shared.db.partitions import Head, LimitStore, QueueStore, ShareStore
from shared.db.queries import q
from shared.estimate import MAX_AHEAD, Queued, Running, estimate_start
from shared.membership import Member
from shared.partitions import Verdict
from shared.placement import Node
from shared.priority import fair_share
from shared.ranking import Ranking
from shared.states import JobState, PendingReason, WorkerState

routes = web.RouteTableDef()

OWN = {
    PendingReason.HELD: "held: it starts only after `scns release`",
    PendingReason.DEPENDENCY: "waiting for its dependency",
    PendingReason.BEGIN_TIME: "waiting for its begin time",
    PendingReason.JOB_ARRAY_TASK_LIMIT: "its array's throttle allows no more elements to run",
}


def _reason(code: str, message: str) -> dict[str, str]:
    return {"reason": code, "message": message}


def _own(job: Job) -> list[dict[str, str]]:
    if job.reason not in OWN:
        return []
    message = OWN[PendingReason(job.reason)]
    if job.reason == PendingReason.DEPENDENCY and job.dependency:
        message += f" ({job.dependency})"
    if job.reason == PendingReason.BEGIN_TIME and job.begin_at is not None:
        message += f" ({iso(job.begin_at)})"
    return [_reason(str(job.reason), message)]


def _workers(verdict: Verdict, members: Sequence[Member]) -> list[Member]:
    return [m for m in members if m.state == WorkerState.READY
            and any(p.selects(m.labels) for p in verdict.eligible)]


def _room(job: Job, ready: Sequence[Member], used: Mapping[str, tuple[int, int]]
          ) -> dict[str, str] | None:
    """Resources, when none of its workers has room for it now."""
    need_mem = job.memory_mb or 0
    if any(m.cpus - used[m.worker_id][0] >= job.cpus
           and m.memory_mb - used[m.worker_id][1] >= need_mem for m in ready):
        return None
    if not ready:
        return _reason(PendingReason.RESOURCES, "no ready worker in its partitions")
    most = max(m.cpus - used[m.worker_id][0] for m in ready)
    return _reason(PendingReason.RESOURCES,
                   f"no worker of its partitions has {job.cpus} free CPUs"
                   f"{f' and {need_mem} MB' if need_mem else ''} (most free now: {most})")


def _ahead(job: Job, mine: frozenset[str], score: float, heads: Sequence[Head], *,
           rank: Ranking, members: Sequence[Member]) -> list[tuple[float, int, Queued]]:
    """The pending jobs that go before this one and compete for some of its workers."""
    out: list[tuple[float, int, Queued]] = []
    for h in heads:
        if h.id == job.id:
            continue
        v = rank.verdict(h.user, h.partition, h.cpus, h.time_limit_s)
        if not v.eligible:
            continue
        theirs = frozenset(m.worker_id for m in _workers(v, members))
        if not theirs & mine:
            continue
        s = rank.factors(user=h.user, waited_s=h.waited_s, priority=h.priority,
                         tier=v.tier).score(rank.weights)
        if (s, -h.id) > (score, -job.id):
            out.append((s, h.id, Queued(cpus=h.cpus, memory_mb=h.memory_mb,
                                        time_limit_s=h.time_limit_s, workers=theirs)))
    out.sort(key=lambda x: (-x[0], x[1]))
    return out[:MAX_AHEAD]


async def explain(request: web.Request, job: Job) -> dict[str, Any]:
    g = state(request)
    settings = g.wiring.settings
    out: dict[str, Any] = {"job_id": job.id, "state": str(job.state), "reasons": [],
                           "priority": None, "partitions": [], "ahead": None,
                           "estimated_start_at": None,
                           "estimate": f"not pending ({job.state})"}
    if job.state is not JobState.PENDING:
        return out
    parts = await partitions_of(request)
    rows = await ShareStore(g.pool).usage(settings.fairshare_half_life_s)
    table = fair_share({u.user: u.cpu_s for u in rows}, {u.user: u.shares for u in rows})
    rank = Ranking(partitions=parts, fair={u: r.factor for u, r in table.items()},
                   weights=settings.weights)
    verdict = rank.verdict(job.user, job.partition or "default", job.cpus, job.time_limit_s)
    names = (job.partition or "default").split(",")
    refused = {n: why for n, _, why in verdict.refused}
    out["partitions"] = [{"name": n, "eligible": n not in refused, "why": refused.get(n)}
                         for n in names]
    reasons = _own(job)
    if not verdict.eligible:
        reasons.append(_reason(verdict.reason, verdict.message))
    f = rank.factors(user=job.user, waited_s=(clock.utcnow() - job.submitted_at)
                     .total_seconds(), priority=job.priority, tier=verdict.tier)
    score = f.score(settings.weights)
    out["priority"] = {"score": round(score, 3), "factors": f.as_json(),
                       "weights": settings.weights.as_json()}
    limits = await LimitStore(g.pool).get(job.user)
    if limits.max_running_cpus is not None \
            and limits.running_cpus + job.cpus > limits.max_running_cpus:
        reasons.append(_reason(PendingReason.QOS_MAX_CPU_PER_USER,
                               f"{job.user} holds {limits.running_cpus} of the "
                               f"{limits.max_running_cpus} CPUs allowed to run at once; this "
                               f"job needs {job.cpus}"))
    members = await g.membership.live_members()
    limited = await _partition_limits(request, job, verdict, members)
    if limited is not None:
        reasons.append(limited)
    ready = _workers(verdict, members)
    usage = await g.allocator.usage([m.worker_id for m in ready])
    used = {w: (u.cpus, u.memory_mb) for w, u in usage.items()}
    if verdict.eligible:
        room = _room(job, ready, used)
        if room is not None:
            reasons.append(room)
    await _estimate(request, job, out, reasons, rank=rank, score=score, ready=ready,
                    members=members)
    out["reasons"] = reasons
    return out


async def _partition_limits(request: web.Request, job: Job, verdict: Verdict,
                            members: Sequence[Member]) -> dict[str, str] | None:
    """QOSMaxCpuPerUserLimit when every eligible partition limits its users' running CPUs and
    the job's user has no room left in any of them."""
    eligible = verdict.eligible
    if not eligible or any(p.max_running_cpus_per_user is None for p in eligible):
        return None
    held = await LimitStore(state(request).pool).held([job.user])
    notes = []
    for p in eligible:
        mine = {m.worker_id for m in members if p.selects(m.labels)}
        used = sum(c for _, names, w, c in held if p.name in names.split(",") and w in mine)
        if used + job.cpus <= (p.max_running_cpus_per_user or 0):
            return None
        notes.append(f"{used} of the {p.max_running_cpus_per_user} CPUs each user may run in "
                     f"partition {p.name}")
    return _reason(PendingReason.QOS_MAX_CPU_PER_USER,
                   f"{job.user} holds {'; '.join(notes)}; this job needs {job.cpus}")


async def _estimate(request: web.Request, job: Job, out: dict[str, Any],
                    reasons: list[dict[str, str]], *, rank: Ranking, score: float,
                    ready: Sequence[Member], members: Sequence[Member]) -> None:
    g = state(request)
    if not ready:
        out["estimate"] = "no estimate: none of its partitions has a ready worker"
        return
    mine = frozenset(m.worker_id for m in ready)
    queue = QueueStore(g.pool)
    groups = await queue.groups()
    per_group = max(MAX_AHEAD // max(len(groups), 1), 50)
    heads = await queue.heads([(u, p, MAX_PRIORITY, 0) for u, p in groups], per_group)
    ahead = _ahead(job, mine, score, heads, rank=rank, members=members)
    out["ahead"] = len(ahead)
    if ahead:
        reasons.append(_reason(PendingReason.PRIORITY,
                               f"{len(ahead)} job(s) with a higher score go first on its "
                               "workers"))
    if any(r["reason"] in OWN or r["reason"].startswith(("Partition", "QOS")) for r in reasons):
        out["estimate"] = "no estimate: it cannot start until the reasons above clear"
        return
    busy = [Running(worker_id=r["worker_id"], cpus=r["cpus"], memory_mb=r["memory_mb"],
                    ends_in_s=r["ends_in_s"])
            for r in await g.pool.fetch(q("active_on_workers"), sorted(mine))]
    now = clock.utcnow()  # what the running jobs have left was just counted from about now
    nodes = [Node(id=m.worker_id, cpus=m.cpus, memory_mb=m.memory_mb) for m in ready]
    start = estimate_start(Queued(cpus=job.cpus, memory_mb=job.memory_mb or 0,
                                  time_limit_s=job.time_limit_s, workers=mine),
                           ahead=[a for _, _, a in ahead], nodes=nodes, running=busy)
    if start is None:
        out["estimate"] = ("no estimate: a job it waits for has no time limit (its end is "
                           "unknown)")
        return
    at = now + timedelta(seconds=start)
    out["estimated_start_at"] = iso(at)
    out["estimate"] = (f"from the time limits of {len(busy)} running job(s) and "
                       f"{len(ahead)} job(s) ahead of it")


@routes.get("/api/v1/jobs/{job_id}/explain")
async def explain_job(request: web.Request) -> web.Response:
    return json(await explain(request, (await target(request)).job))
