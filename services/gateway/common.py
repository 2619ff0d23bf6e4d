"""What every gateway handler shares: app state, JSON in and out, the error shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from services.gateway.validation import RequestError
from shared.allocation import Allocator
from shared.bus import StreamBus
from shared.db.jobs import Job
from shared.dispatch import ArqDispatcher
from shared.keys import Keys
from shared.membership import Membership
from shared.settings import Settings

MAX_BODY = 2 * 1024 * 1024  # a 1 MiB script plus JSON escaping and the other fields


@dataclass(slots=True)
class Gateway:
    settings: Settings
    redis: Redis
    pool: asyncpg.Pool[Any]
    keys: Keys
    membership: Membership
    allocator: Allocator
    dispatcher: ArqDispatcher
    bus: StreamBus
    largest: tuple[float, int | None, int | None] = (0.0, None, None)


GATEWAY = web.AppKey("gateway", Gateway)


def state(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return json({"error": {"code": code, "message": message}}, status=status)


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "application/octet-stream", ""):
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


def job_json(job: Job, *, with_script: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id, "name": job.name, "user": job.user, "state": str(job.state),
        "reason": job.reason, "cpus": job.cpus, "memory_mb": job.memory_mb,
        "time_limit": job.time_limit_s, "worker_id": job.worker_id, "attempt": job.attempt,
        "exit_code": job.exit_code, "signal": job.signal, "priority": job.priority,
        "requeue": job.requeue, "cancel_requested": job.cancel_requested,
        "submit_dir": job.submit_dir, "env": dict(job.env),
        "submitted_at": iso(job.submitted_at), "allocated_at": iso(job.allocated_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
    }
    if with_script:
        out["script"] = job.script
    return out


def path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise RequestError(400, "invalid_id", f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def user_of(request: web.Request) -> str:
    """The caller's name. Until token auth lands the CLI sends X-SCNS-User (unauthenticated)."""
    user = request.headers.get("X-SCNS-User", "").strip()
    if user and len(user) <= 64 and user.replace("-", "").replace("_", "").replace(".", "") \
            .isalnum():
        return user
    return "anonymous"
