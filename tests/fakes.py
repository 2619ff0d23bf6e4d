"""A fake of the CLI's gateway client (services/cli/client.py) for the CLI's unit tests: it
answers by (method, path) and records every call."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from services.cli.client import ApiError, Client


class FakeClient:
    """An answer is a value, an ApiError (raised), a list (one per call, the last repeated)
    or a function of the query."""

    def __init__(self, answers: dict[tuple[str, str], Any] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, str, Any, Any]] = []
        self.submitted: list[tuple[dict[str, Any], bool]] = []
        self.submit_answer: Any = None
        self.submit_error: ApiError | None = None

    def submit(self, body: dict[str, Any], *, test_only: bool = False) -> Any:
        self.submitted.append((body, test_only))
        if self.submit_error:
            raise self.submit_error
        return self.submit_answer

    def call(self, method: str, path: str, body: Any = None,
             query: Mapping[str, Any] | None = None, headers: Any = None) -> Any:
        self.calls.append((method, path, body, query))
        answer = self.answers[(method, path)]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if callable(answer):
            answer = answer(query)
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def stream(self, path: str, query: Mapping[str, Any]) -> Iterator[bytes]:
        """The chunks of a streamed answer: answers[("STREAM", path)] is bytes or a tuple of
        chunks (or, as any answer, a list of those, one per call)."""
        chunks = self.call("STREAM", path, query=query)
        yield from (chunks,) if isinstance(chunks, bytes) else chunks

    collect = Client.collect  # the real paging, over this fake's `call`

    def pages(self, path: str, query: Mapping[str, Any]
              ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """One page, filtered by `state` as the gateway would."""
        page = self.call("GET", path, query=query)
        states = (query.get("state") or "").split(",")
        yield [j for j in page["items"] if not states[0] or j.get("state") in states], \
            page["next_cursor"]
