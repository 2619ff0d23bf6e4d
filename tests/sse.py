"""A small reader of Server-Sent Events for the tests (the parser a browser runs, in Python)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads("\n".join(self.data))


async def messages(content: aiohttp.StreamReader) -> AsyncIterator[Message]:
    """Each dispatched message (comments ride on the next one, or alone at a blank line)."""
    msg = Message()
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if msg.data or msg.comments or msg.id is not None:
                yield msg
            msg = Message()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            msg.comments.append(value)
        elif name == "id":
            msg.id = value
        elif name == "event":
            msg.event = value
        elif name == "data":
            msg.data.append(value)


async def events(content: aiohttp.StreamReader, n: int) -> list[Message]:
    """The next `n` events (messages with data), skipping comments."""
    out: list[Message] = []
    if n <= 0:
        return out
    async for m in messages(content):
        if m.data:
            out.append(m)
            if len(out) == n:
                break
    return out
