"""Named SQL, kept in `queries.sql` (procrastinate's habit): no SQL strings in handlers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} is defined twice")
        out[name] = body.strip()
    return out


@cache
def queries() -> Mapping[str, str]:
    return parse(resources.files("shared.db").joinpath("queries.sql").read_text("utf-8"))


def q(name: str) -> str:
    return queries()[name]
