"""What every gateway handler shares: app state, JSON in and out, the error shape."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from redis.asyncio import Redis

from services.gateway.validation import MAX_ID, RequestError
from shared import clock
from shared.allocation import Allocator
from shared.arrays import SpecError, parse_ref
from shared.db.jobs import Attempt, Job, JobStore
from shared.keys import Keys
from shared.lifecycle import Lifecycle, Role
from shared.membership import Member, Membership
from shared.partitions import Partition
from shared.wiring import Wiring

MAX_BODY = 2 * 1024 * 1024  # a 1 MiB script plus JSON escaping and the other fields
WRITE_STALL_S = 30.0  # LongResponse: a client that takes nothing for this long is hung up on


@dataclass(slots=True)
class Gateway:
    wiring: Wiring
    # cached a second (a change made through this gateway clears its own cache at once)
    members: list[Member] = field(default_factory=list)
    members_at: float = float("-inf")
    partitions: dict[str, Partition] = field(default_factory=dict)
    partitions_at: float = float("-inf")
    pending_limits: dict[str, int] = field(default_factory=dict)  # user -> max pending jobs
    pending_limits_at: float = float("-inf")

    @property
    def redis(self) -> Redis:
        return self.wiring.redis

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        return self.wiring.pool

    @property
    def keys(self) -> Keys:
        return self.wiring.keys

    @property
    def membership(self) -> Membership:
        return self.wiring.membership

    @property
    def allocator(self) -> Allocator:
        return self.wiring.allocator

    @property
    def lifecycle(self) -> Lifecycle:
        return self.wiring.lifecycle

    @property
    def jobs(self) -> JobStore:
        return self.wiring.jobs


GATEWAY = web.AppKey("gateway", Gateway)


def state(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def json(data: Any, status: int = 200) -> web.Response:
    """`data` as JSON; a datetime in it as `iso` writes it (UTC, `Z`)."""
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_UTC_Z), status=status,
                        content_type="application/json")


def error(status: int, code: str, message: str, *, retry_after_s: int | None = None
          ) -> web.Response:
    resp = json({"error": {"code": code, "message": message}}, status=status)
    if retry_after_s is not None:
        resp.headers["Retry-After"] = str(retry_after_s)
    return resp


class LongResponse(web.StreamResponse):
    """A long streamed answer (a log follow, an event stream) whose client must keep reading:
    a write it has not taken within WRITE_STALL_S (its TCP window stayed shut) hangs up on it
    and raises ConnectionResetError, so a client that stops reading cannot hold a stream, its
    buffers and its handler for as long as it likes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._stall_s = WRITE_STALL_S
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._transport = request.transport
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._taken(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._taken(super().write_eof(data))

    async def _taken(self, step: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self._stall_s):
                await step
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()
            raise ConnectionResetError(
                f"the client took nothing for {self._stall_s:g} s: hung up") from None


def client_gone(request: web.Request) -> bool:
    """Whether the client of a long response has hung up (its connection is closing or closed;
    aiohttp does not cancel the handler for it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise RequestError(415, "unsupported_media_type",
                           f"send JSON (Content-Type: application/json), not "
                           f"{request.content_type}")
    raw = await request.read()
    if not raw:
        raise RequestError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RequestError(400, "invalid_json", f"the request body is not valid JSON: {e}") from e


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_json(job: Job, *, full: bool = False) -> dict[str, Any]:
    """A job as the API shows it; `full` (GET /jobs/{id}) adds its script and environment,
    which listings never carry."""
    out: dict[str, Any] = {
        "id": job.id, "name": job.name, "user": job.user, "state": str(job.state),
        "reason": job.reason, "cpus": job.cpus, "memory_mb": job.memory_mb,
        "time_limit": job.time_limit_s, "worker_id": job.worker_id, "attempt": job.attempt,
        "exit_code": job.exit_code, "signal": job.signal, "priority": job.priority,
        "requeue": job.requeue, "cancel_requested": job.cancel_requested,
        "requeue_requested": job.requeue_requested, "retries": job.retries,
        "retry_delay_s": job.retry_delay_s, "retries_used": job.retries_used,
        "array_job_id": job.array_job_id, "array_task_id": job.array_task_id,
        "array_throttle": job.array.throttle if job.array else None,
        "dependency": job.dependency, "partition": job.partition,
        "submit_dir": job.submit_dir, "workdir": job.workdir, "output": job.stdout_path,
        "error": job.stderr_path, "schedule_id": job.schedule_id,
        "submitted_at": iso(job.submitted_at), "begin_at": iso(job.begin_at),
        "allocated_at": iso(job.allocated_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
    if job.usage is not None:
        out["peak_rss_kb"] = job.usage.peak_rss_kb
        out["cpu_s"] = job.usage.cpu_s
    if full:
        out["script"] = job.script
        out["env"] = dict(job.env)
    return out


def attempt_json(a: Attempt) -> dict[str, Any]:
    elapsed = None
    if a.started_at is not None:
        end = a.finished_at or clock.utcnow()
        elapsed = round((end - a.started_at).total_seconds(), 3)
    return {
        "attempt": a.attempt, "worker_id": a.worker_id, "cpus": a.cpus,
        "memory_mb": a.memory_mb, "state": a.state, "reason": a.reason,
        "exit_code": a.exit_code, "signal": a.signal, "allocated_at": iso(a.allocated_at),
        "started_at": iso(a.started_at), "finished_at": iso(a.finished_at),
        "elapsed_s": elapsed, "peak_rss_kb": a.usage.peak_rss_kb,
        "cpu_user_s": a.usage.cpu_user_s, "cpu_system_s": a.usage.cpu_system_s,
        "cpu_s": a.usage.cpu_s,
    }


@dataclass(frozen=True, slots=True)
class Target:
    """What a `{job_id}` path names: a job (`12`, or an element `12_3`), and whether the bare
    id is an array's (then cancel, hold and release act on every element)."""

    job: Job
    whole_array: bool

    @property
    def label(self) -> str:
        j = self.job
        if j.array_job_id is not None and not self.whole_array:
            return f"{j.array_job_id}_{j.array_task_id}"
        return str(j.id)


async def target(request: web.Request, name: str = "job_id") -> Target:
    """The job a path names (`12` or `12_3`); a 404 when there is none."""
    raw = request.match_info[name]
    try:
        ref = parse_ref(raw)
    except SpecError as e:
        raise RequestError(400, "invalid_id", str(e)) from e
    if ref.id > MAX_ID:
        raise RequestError(400, "invalid_id", f"job id {ref.id} is out of range")
    jobs = state(request).jobs
    who = principal(request).owner  # another user's job is not found, in SQL
    job = await (jobs.get(ref.id, owner=who) if ref.index is None
                 else jobs.element(ref.id, ref.index, owner=who))
    if job is None:
        raise RequestError(404, "not_found", f"job {ref} does not exist")
    return Target(job=job, whole_array=ref.index is None and job.array_job_id == job.id)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, from their token (services/gateway/auth.py)."""

    user: str
    role: Role
    token_id: str

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def owner(self) -> str | None:
        """Whose jobs this caller may see and act on: their own, or everyone's (None)."""
        return None if self.admin else self.user


PRINCIPAL = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    """The caller (the auth middleware has authenticated every non-public route)."""
    p: Principal = request[PRINCIPAL]
    return p


def role_of(request: web.Request) -> Role:
    return principal(request).role


def user_of(request: web.Request) -> str:
    return principal(request).user


def require_admin(request: web.Request) -> Principal:
    p = principal(request)
    if not p.admin:
        raise RequestError(403, "forbidden", "this needs an admin token")
    return p
