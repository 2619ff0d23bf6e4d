"""Hold the gateway's answers to its OpenAPI document: every response an integration test sees
through the `http` fixture is checked against the operation's documented responses (status,
content type, and for JSON the body's schema) when the test ends."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from services.gateway import openapi

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SEEN: Counter[tuple[str, str, int]] = Counter()  # (method, path, status) across the session


@dataclass
class Recorder:
    """An outermost middleware that keeps what each matched route answered."""

    answers: list[tuple[str, str, int, str, bytes | None]] = field(default_factory=list)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        resource = request.match_info.route.resource
        if resource is not None and request.method != "HEAD":
            body = resp.body if isinstance(resp, web.Response) else None
            raw = body if isinstance(body, bytes) else None
            self.answers.append((request.method, resource.canonical, resp.status,
                                 resp.content_type, raw))
        return resp

    def problems(self) -> list[str]:
        return [p for answer in self.answers for p in check(*answer)]


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    spec = openapi.spec()
    return Draft202012Validator({**schema, "components": spec["components"]})


def check(method: str, path: str, status: int, content_type: str, body: bytes | None
          ) -> list[str]:
    """What is wrong with one answer, by the document (nothing: an empty list)."""
    where = f"{method} {path} → {status}"
    item = openapi.spec()["paths"].get(path)
    if item is None or method.lower() not in item:
        return [f"{where}: the route is not in the document"]
    SEEN[(method, path, status)] += 1
    responses = item[method.lower()]["responses"]
    documented = responses.get(str(status))
    if documented is None:
        return [f"{where}: status not documented (documented: {sorted(responses)})"]
    content = documented.get("content")
    if content is None:
        return []
    media = content.get(content_type) or content.get("*/*")
    if media is None:
        return [f"{where}: content type {content_type} not documented ({sorted(content)})"]
    if content_type != "application/json" or body is None:
        return []
    errors = sorted(_validator(media["schema"]).iter_errors(orjson.loads(body)),
                    key=lambda e: list(e.absolute_path))
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in errors[:5]]
