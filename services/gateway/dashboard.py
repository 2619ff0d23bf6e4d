"""The dashboard: a static page at `/` and its files at `/ui/{name}`.

The page is plain HTML, CSS and JavaScript modules shipped in the package (`static/`, no build
step, nothing fetched from elsewhere: clusters are offline). Its files need no token; the page
asks for one and sends it as `Authorization: Bearer` on every API call, so what it shows is what
the API would show that token.

Only the files that are in the folder are served (looked up by name among the folder's entries,
never joined onto a path), each with its content type, an ETag with `Cache-Control:
no-cache` (a browser revalidates, and gets a 304 while the file is unchanged, so an upgraded
gateway never serves a stale script with a new page) and a strict Content-Security-Policy: every
script, style, image and connection from this origin only, no inline script or style, no
framing.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from services.gateway.validation import RequestError

STATIC = Path(__file__).with_name("static")
INDEX = "index.html"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)+")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def files() -> dict[str, Path]:
    """Every servable file of the folder, by name."""
    if not STATIC.is_dir():
        return {}
    return {p.name: p for p in STATIC.iterdir()
            if p.suffix.lower() in TYPES and NAME.fullmatch(p.name) and p.is_file()}


@functools.lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int, size: int) -> StaticFile:
    """A file's bytes, read once per version (an edited file is read again: no restart)."""
    body = path.read_bytes()
    return StaticFile(body=body, content_type=TYPES[path.suffix.lower()],
                      etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def static_file_named(name: str) -> StaticFile | None:
    path = files().get(name) if NAME.fullmatch(name) else None
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return _load(path, st.st_mtime_ns, st.st_size)


def _serve(request: web.Request, name: str) -> web.Response:
    f = static_file_named(name)
    if f is None:
        raise RequestError(404, "not_found", f"the dashboard has no file {name[:100]!r}")
    headers = {**HEADERS, "ETag": f.etag}
    if f.etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = f.content_type
    return web.Response(body=f.body, headers=headers)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    """The dashboard's page (the views are routed in the page: #/jobs, #/workers, ...)."""
    return _serve(request, INDEX)


@routes.get("/ui/{name}")
async def static_file(request: web.Request) -> web.Response:
    """One of the dashboard's files: scripts, styles, icons."""
    return _serve(request, request.match_info["name"])
