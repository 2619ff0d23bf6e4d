"""Token endpoints (admin): make one (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway.auth import TOKEN_CACHE
from services.gateway.common import iso, json, read_json, require_admin, state
from services.gateway.throttle import page_limit
from services.gateway.validation import RequestError, query_text
from shared.db.tokens import MAX_LIFETIME_S, ROLES, USER_NAME, TokenRow, TokenStore

routes = web.RouteTableDef()

TOKEN_FIELDS = frozenset({"user", "role", "expires_in_s"})
TOKEN_ID_MAX = 64


def token_json(t: TokenRow) -> dict[str, Any]:
    return {"id": t.id, "user": t.user, "role": t.role, "created_at": iso(t.created_at),
            "created_by": t.created_by, "expires_at": iso(t.expires_at),
            "revoked_at": iso(t.revoked_at), "active": t.problem is None}


def parse_token_request(body: Any) -> tuple[str, str, int | None]:
    """(user, role, expires_in_s) of a POST /tokens body, or a 400 that says what is wrong."""
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_json", "the body must be a JSON object")
    unknown = sorted(set(body) - TOKEN_FIELDS)
    if unknown:
        raise RequestError(400, "invalid_field", f"unknown field(s): {', '.join(unknown)[:200]}; "
                                                 f"use {', '.join(sorted(TOKEN_FIELDS))}")
    user = body.get("user")
    if not isinstance(user, str) or not USER_NAME.match(user):
        raise RequestError(400, "invalid_field", "'user' is required: 1 to 64 letters, digits, "
                                                 "'.', '_' or '-'")
    role = body.get("role", "user")
    if role not in ROLES:
        raise RequestError(400, "invalid_field", "'role' must be user or admin")
    expires = body.get("expires_in_s")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)
                                or not 1 <= expires <= MAX_LIFETIME_S):
        raise RequestError(400, "invalid_field", "'expires_in_s' must be an integer from 1 to "
                                                 f"{MAX_LIFETIME_S} (seconds)")
    return user, role, expires


@routes.post("/api/v1/tokens")
async def create(request: web.Request) -> web.Response:
    """The token itself is in this answer only; the database keeps its digest."""
    admin = require_admin(request)
    user, role, expires = parse_token_request(await read_json(request))
    row, token = await TokenStore(state(request).pool).create(
        user, role, expires_in_s=expires, created_by=admin.user)
    return json({**token_json(row), "token": token}, status=201)


@routes.get("/api/v1/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query
    limit = page_limit(request)
    user = query_text(q, "user", max_len=64)
    cursor = q.get("cursor") or None
    if cursor is not None and (len(cursor) > TOKEN_ID_MAX or not cursor.isalnum()
                               or not cursor.isascii()):
        raise RequestError(400, "invalid_query", "'cursor' must be a token id (the "
                                                 "next_cursor of the previous page)")
    rows = await TokenStore(state(request).pool).list(user=user, after_id=cursor,
                                                      limit=limit + 1)
    items = rows[:limit]
    next_cursor = items[-1].id if len(rows) > limit else None
    return json({"items": [token_json(t) for t in items], "next_cursor": next_cursor})


@routes.delete("/api/v1/tokens/{token_id}")
async def revoke(request: web.Request) -> web.Response:
    """Idempotent: revoking a revoked token answers it again. Every gateway stops accepting it
    within its cache time (2 s)."""
    require_admin(request)
    token_id = request.match_info["token_id"]
    if len(token_id) > TOKEN_ID_MAX or not token_id.isalnum():
        raise RequestError(404, "not_found", f"token {token_id[:TOKEN_ID_MAX]} does not exist")
    row = await TokenStore(state(request).pool).revoke(token_id)
    request.app[TOKEN_CACHE].clear()  # this gateway at once; the others within CACHE_S
    if row is None:
        raise RequestError(404, "not_found", f"token {token_id} does not exist")
    return json(token_json(row))
