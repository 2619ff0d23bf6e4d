"""A small synchronous client of the gateway's HTTP API (stdlib urllib: the CLI needs no loop)."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared.errors import ConductorError
from shared.settings import default_data_dir

DEFAULT_URL = "http://127.0.0.1:8080"
ADMIN_TOKEN_FILE = "admin.token"
MAX_PAGE = 200  # the gateway's largest page (services/gateway/validation.py)
SUBMIT_RETRY_S = 60.0  # how long a submit keeps retrying a gateway that is down or restarting
RETRY_AFTER_MAX_S = 10.0  # a Retry-After is honoured up to this long per try


class Unreachable(ConductorError):
    """The gateway did not answer (down, restarting, or the answer was lost)."""


class ApiError(ConductorError):
    def __init__(self, status: int, code: str, message: str, *,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message  # the server's words alone, for one-line `error: ...` reports
        self.retry_after_s = retry_after_s  # a 429's or 503's Retry-After


def find_token(env: Mapping[str, str]) -> str | None:
    """The caller's token: $SCNS_TOKEN, else the admin token `scns up` wrote to
    $SCNS_DATA_DIR/admin.token (readable by its owner only)."""
    token = env.get("SCNS_TOKEN", "").strip()
    if token:
        return token
    path = token_file(env)
    try:
        return path.read_text("utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def token_file(env: Mapping[str, str]) -> Path:
    data = env.get("SCNS_DATA_DIR")
    return (Path(data).expanduser() if data else default_data_dir(env)) / ADMIN_TOKEN_FILE


class Client:
    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None,
                 query: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> urllib.request.Request:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}, doseq=True)
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        return req

    def submit(self, body: Any, *, retry_s: float = SUBMIT_RETRY_S,
               test_only: bool = False) -> Any:
        """POST a job exactly once, however often the request must be retried: every try
        carries the same Idempotency-Key, so a try whose answer was lost (the gateway died
        after committing) returns the job it made instead of making a second one.

        `test_only` asks the gateway to validate the job fully and answer what it would make
        (`{"test_only": true, "job": {...}, "array_count": N}`) without making anything."""
        headers = {"Idempotency-Key": f"scns-{uuid.uuid4()}"}
        query = {"test_only": "1"} if test_only else None
        for attempt in Retrying(
            retry=retry_if_exception(retryable), stop=stop_after_delay(retry_s),
            wait=_wait, reraise=True,
        ):
            with attempt:
                return self.call("POST", "/api/v1/jobs", body, query=query, headers=headers)
        raise AssertionError("unreachable")  # pragma: no cover

    def collect(self, path: str, query: Mapping[str, Any], limit: int) -> dict[str, Any]:
        """Up to `limit` items of a cursor-paginated listing, however many pages that takes:
        `{"items", "next_cursor"}` (the cursor after the last item read, None at the end)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            q = {**query, "limit": min(MAX_PAGE, limit - len(items))}
            if cursor:
                q["cursor"] = cursor
            page = self.call("GET", path, query=q)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor or len(items) >= limit:
                return {"items": items, "next_cursor": cursor}

    def pages(self, path: str, query: Mapping[str, Any], *, page_size: int = MAX_PAGE
              ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """A cursor-paginated listing, page by page: (items, next_cursor) until the cursor
        runs out or the caller stops asking."""
        cursor: str | None = None
        while True:
            page = self.call("GET", path, query={**query, "limit": page_size,
                                                 "cursor": cursor})
            cursor = page.get("next_cursor")
            yield page["items"], cursor
            if not cursor:
                return

    def call(self, method: str, path: str, body: Any = None,
             query: Mapping[str, Any] | None = None,
             headers: Mapping[str, str] | None = None) -> Any:
        req = self._request(method, path, body, query, headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                if resp.headers.get_content_type() == "application/json":
                    return orjson.loads(raw)
                return raw.decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable(f"cannot reach the gateway at {self.url}: {reason}; is "
                              "`scns up` running, or SCNS_URL set?") from None

    def stream(self, path: str, query: Mapping[str, Any],
               headers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        req = self._request("GET", path, query=query, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=None) as resp:
                while chunk := resp.read1(65536):
                    yield chunk
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None
        except (urllib.error.URLError, ConnectionError) as e:
            raise ConductorError(f"cannot reach the gateway at {self.url}: {e}") from None


def retryable(e: BaseException) -> bool:
    """Worth trying again with the same key: no answer, or the system said "not now"."""
    return isinstance(e, Unreachable) or (isinstance(e, ApiError)
                                          and e.status in (429, 502, 503, 504))


_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=3.0)


def _wait(state: RetryCallState) -> float:
    """The backoff, or the gateway's Retry-After when it sent a longer one (up to a cap)."""
    backoff: float = _BACKOFF(state)
    e = state.outcome.exception() if state.outcome is not None else None
    if isinstance(e, ApiError) and e.retry_after_s is not None:
        return max(backoff, min(e.retry_after_s, RETRY_AFTER_MAX_S))
    return backoff


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the gateway never sends one


def _api_error(e: urllib.error.HTTPError) -> ApiError:
    wait = _retry_after(e.headers.get("Retry-After") if e.headers is not None else None)
    try:
        body = orjson.loads(e.read())
        err = body["error"]
        return ApiError(e.code, err["code"], err["message"], retry_after_s=wait)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ApiError(e.code, "http_error", str(e.reason), retry_after_s=wait)

