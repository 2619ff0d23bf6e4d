"""The gateway: aiohttp application, error shape, health, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from services.gateway import (
    auth,
    cluster,
    control,
    events,
    explain,
    jobs,
    openapi,
    partitions,
    schedules,
    tokens,
)
from services.gateway.common import GATEWAY, MAX_BODY, Gateway, error, json
from services.gateway.dashboard import routes as dashboard_routes
from services.gateway.follow import JobProgress
from services.gateway.throttle import REFUSALS, THROTTLE, Throttle, watch
from services.gateway.validation import RequestError
from shared.db import UNAVAILABLE
from shared.errors import PoolBusy
from shared.health import metrics_response
from shared.service import reachable
from shared.wiring import Wiring

log = logging.getLogger(__name__)

STOPPING = web.AppKey("stopping", asyncio.Event)  # set on SIGTERM: /readyz answers 503
BUSY_RETRY_AFTER_S = 1  # no database connection free (PoolBusy): they free in milliseconds
UNAVAILABLE_RETRY_AFTER_S = 5  # PostgreSQL or Redis away
# Connections the kernel queues for accept(): aiohttp's default of 128 overflows when hundreds
# of clients connect at once, and an overflowed SYN is dropped and only resent by the client a
# second later (a 1 s answer for a request that takes 2 ms). net.core.somaxconn caps it.
LISTEN_BACKLOG = 4096

REQUESTS = Counter("scns_gateway_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("scns_gateway_request_seconds", "Server time per request", ["route"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error": {"code", "message"}}`; bad input is always a 4xx."""
    started = time.perf_counter()
    try:
        resp = await handler(request)
    except RequestError as e:
        if e.status == 429:
            await request.app[THROTTLE].tarpit.pause(e.retry_after_s)
        resp = error(e.status, e.code, e.message, retry_after_s=e.retry_after_s)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(e.status, "bad_request")
        message = (e.text or e.reason) if e.status != 413 else (
            f"the request body is larger than {MAX_BODY} bytes (scripts are limited to 1 MiB)")
        if e.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        resp = error(e.status, code, message)
        if "Allow" in e.headers:  # a 405 says which methods the route takes
            resp.headers["Allow"] = e.headers["Allow"]
    except PoolBusy as e:  # before UNAVAILABLE, which it is part of
        log.warning("no database connection free: %s", e)
        REFUSALS.labels("db_pool").inc()
        resp = error(503, "overloaded", "this gateway has no database connection free; retry "
                     "shortly", retry_after_s=BUSY_RETRY_AFTER_S)
    except UNAVAILABLE as e:
        log.warning("PostgreSQL unavailable: %s", e)
        REFUSALS.labels("postgresql").inc()
        resp = error(503, "unavailable", "the database is unavailable; retry shortly",
                     retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
    except asyncpg.DataError as e:
        # a value the handlers' validation let through and PostgreSQL refused: still the
        # caller's input, so a 4xx (and logged, so the validation can be tightened)
        log.warning("input refused by PostgreSQL: %s", e, extra={"path": request.path})
        resp = error(400, "invalid_input", f"invalid input: {e}")
    except RedisError as e:
        log.warning("Redis unavailable: %s", e)
        REFUSALS.labels("redis").inc()
        resp = error(503, "unavailable", "Redis is unavailable; retry shortly",
                     retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        resp = error(500, "internal", "internal error; it has been logged")
    elapsed = time.perf_counter() - started
    resp.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
    route = _route(request)
    REQUESTS.labels(request.method, route, str(resp.status)).inc()
    LATENCY.labels(route).observe(elapsed)
    return resp


async def healthz(_: web.Request) -> web.Response:
    return json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while this gateway serves, whatever its datastores do: with PostgreSQL (or Redis)
    away it still answers what it can and 503 `unavailable` for the rest (README, "Degraded
    dependencies"), which beats taking every gateway out of the Service and leaving clients
    with refused connections. `degraded` and `checks` say what is missing. Not ready once it
    is stopping (SIGTERM), so the endpoints drop it before it closes."""
    g = request.app[GATEWAY]
    checks = await reachable(g.redis, g.pool)
    stopping = request.app[STOPPING].is_set()
    return json({"ready": not stopping, "degraded": not all(checks.values()),
                 "stopping": stopping, "checks": checks}, status=503 if stopping else 200)


async def metrics(request: web.Request) -> web.Response:
    """Any valid token (a scraper gets a user token of its own): never anonymous here. The
    cluster gauges are brought up to date first (services/gateway/metrics.py)."""
    from services.gateway.metrics import refresh

    await refresh(request.app[GATEWAY].wiring)
    return metrics_response()


def create_app(wiring: Wiring) -> web.Application:
    cache = auth.TokenCache()
    throttle = Throttle.from_settings(wiring.settings)
    app = web.Application(middlewares=[api_errors, auth.middleware(cache, throttle.requests)],
                          client_max_size=MAX_BODY)
    app[GATEWAY] = Gateway(wiring=wiring)
    app[THROTTLE] = throttle
    app[jobs.JOB_PROGRESS] = JobProgress(wiring.pool, ttl_s=jobs.FOLLOW_POLL_S)
    app[STOPPING] = asyncio.Event()
    app[auth.TOKEN_CACHE] = cache
    app[schedules.FIRING] = schedules.firing(wiring)
    app.add_routes(jobs.routes)
    app.add_routes(tokens.routes)
    app.add_routes(openapi.routes)
    app.add_routes(control.routes)
    app.add_routes(cluster.routes)
    app.add_routes(schedules.routes)
    app.add_routes(partitions.routes)
    app.add_routes(explain.routes)
    app.add_routes(dashboard_routes)
    events.install(app, wiring)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def _main() -> int:
    from shared import service

    async with service.started("gateway", pool_size=20, health=False) as ctx:
        settings = ctx.settings
        app = create_app(ctx.wiring)
        app[STOPPING] = ctx.stop
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        watch(runner.server)  # scns_gateway_connections
        await web.TCPSite(runner, settings.gateway_host, settings.gateway_port,
                          backlog=LISTEN_BACKLOG).start()
        log.info("gateway listening on http://%s:%d", settings.gateway_host,
                 settings.gateway_port, extra={"event": "started"})
        try:
            await ctx.stop.wait()
        finally:
            await runner.cleanup()
    return 0

def main() -> int:
    from shared import runtime

    return runtime.run(_main)
