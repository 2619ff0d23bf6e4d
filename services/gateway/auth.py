"""Who is calling, and may they: bearer tokens, roles, and the browser-facing guards.

Every route but `/healthz`, `/readyz`, `/api/v1/openapi.json` and the dashboard's page and files
(`/`, `/ui/{name}`: the page asks for a token itself) needs `Authorization: Bearer <token>` (401
otherwise, with `WWW-Authenticate`). A valid token names a user and a role; a
user sees and acts on their own jobs only (the handlers pass the owner down to SQL, so another
user's job reads as not found), and the admin routes answer 403 to users.

Verified tokens are cached for `CACHE_S` (2 s): a revoked or expired token stops working within
that time on every gateway, and a busy client costs one PostgreSQL lookup per 2 s, not one per
request. The requests that miss the cache for one token at the same moment share one lookup
(single flight: a thousand connections of one client arriving as its entry expires make one
query, not a thousand queued for the pool). Failed lookups are not cached (a wrong token costs
an indexed lookup each time).

Every request but `/healthz`, `/readyz` and `/metrics` draws on a request-rate bucket
(services/gateway/throttle.py): its token's once authenticated, its client address's on a public
route and for every token that has to be looked up in PostgreSQL (not in the cache), so that
guessing tokens costs the database at most an address's rate.

Browsers: a request whose `Origin` is not this gateway's own, or that the browser marks
`Sec-Fetch-Site: cross-site`, is refused (403) before anything else, so a web page cannot drive
a local gateway with whatever the browser would attach. A body must be `application/json`
(415): a form a page could post without a CORS preflight is never read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from services.gateway.common import PRINCIPAL, Principal, error, state
from services.gateway.singleflight import SingleFlight
from services.gateway.throttle import RateLimiter, request_cost
from shared import clock
from shared.db.tokens import TokenRow, TokenStore
from shared.lifecycle import Role

CACHE_S = 2.0
CACHE_MAX = 10_000
PUBLIC = frozenset({"/healthz", "/readyz", "/api/v1/openapi.json"})
# the dashboard's page and files (services/gateway/dashboard.py), by route, not by path prefix:
# the page asks for a token and sends it with every API call it makes
PUBLIC_ROUTES = frozenset({"/", "/ui/{name}"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapers: no rate limit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenCache:
    """token -> (principal, valid until monotonic time), in this process's memory only;
    bounded, oldest out first."""

    def __init__(self, ttl_s: float = CACHE_S, size: int = CACHE_MAX) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._items: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self.lookups: SingleFlight[str, TokenRow | None] = SingleFlight()

    def get(self, token: str) -> Principal | None:
        hit = self._items.get(token)
        if hit is None:
            return None
        principal, until = hit
        if time.monotonic() >= until:
            del self._items[token]
            return None
        return principal

    def put(self, token: str, principal: Principal, row: TokenRow) -> None:
        until = time.monotonic() + self.ttl_s
        if row.expires_at is not None:  # never past its own expiry
            left = row.expires_at.timestamp() - clock.time()
            until = min(until, time.monotonic() + max(left, 0.0))
        self._items[token] = (principal, until)
        self._items.move_to_end(token)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


TOKEN_CACHE = web.AppKey("token_cache", TokenCache)


def _unauthorized(message: str) -> web.Response:
    resp = error(401, "unauthorized", message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="scns"'
    return resp


def _own_origin(request: web.Request) -> set[str]:
    host = request.host
    return {f"http://{host}", f"https://{host}"}


def cross_site(request: web.Request) -> str | None:
    """Why a request looks like a browser's from another site (None: it does not)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin not in _own_origin(request):
        return f"requests from the web origin {origin[:100]} are not accepted"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "cross-site browser requests are not accepted"
    return None


def address_key(request: web.Request) -> str:
    return f"addr:{request.remote or 'unknown'}"


async def authenticate(request: web.Request, cache: TokenCache,
                       limiter: RateLimiter | None = None) -> Principal | web.Response:
    """The caller, or the 401 to answer; a token not in the cache is looked up only if the
    client's address has a request left (`limiter`; else a 429)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header:
        return _unauthorized("this needs a token: send 'Authorization: Bearer <token>' "
                             "(scns: set SCNS_TOKEN)")
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("use 'Authorization: Bearer <token>'")
    hit = cache.get(token)
    if hit is not None:
        return hit
    if limiter is not None and not cache.lookups.flying(token):
        limiter.check(address_key(request), who="per client address for token lookups")
    row = await cache.lookups.do(token, lambda: TokenStore(state(request).pool).find(token))
    if row is None:
        return _unauthorized("the token is not valid")
    if row.problem is not None:
        return _unauthorized(f"the token has been {row.problem}")
    p = Principal(user=row.user, role=Role(row.role), token_id=row.id)
    cache.put(token, p, row)
    return p


def _public_route(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in PUBLIC_ROUTES


def middleware(cache: TokenCache, limiter: RateLimiter) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        why = cross_site(request)
        if why is not None:
            return error(403, "cross_origin", why)
        if request.method in BODY_METHODS and request.body_exists \
                and request.content_type != "application/json":
            return error(415, "unsupported_media_type",
                         "send JSON with 'Content-Type: application/json' "
                         f"(got {request.content_type or 'none'})")
        limited = limiter if request.path not in UNLIMITED else None
        if request.path in PUBLIC or _public_route(request):
            if limited is not None:
                limited.check(address_key(request), who="per client address without a token")
            return await handler(request)
        who = await authenticate(request, cache, limited)
        if isinstance(who, web.Response):
            return who
        if limited is not None:
            limited.check(f"token:{who.token_id}", who="per token", cost=request_cost(who, 1))
        request[PRINCIPAL] = who
        return await handler(request)

    return guard
