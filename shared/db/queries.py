"""Named SQL, kept in `queries.sql` (procrastinate's habit): no SQL strings in handlers.

A statement that changes a job names its lifecycle operation (`-- transition: finish`) and
writes its state guard as `{from:finish}` (the states the operation applies to) and, where the
target state is a parameter, `{to:finish}` (the states it may end in). Both are filled in from
`shared.states.TRANSITIONS` when the file is loaded, so the guards are the table; `{sticky}`
likewise becomes the pending reasons only their own operation clears, and `{terminal}` the
terminal states.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

from shared.states import STICKY_REASONS, TERMINAL, TRANSITIONS, Op, sql_list

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_GUARD = re.compile(r"\{(from|to):([a-z_]+)\}|\{sticky\}|\{terminal\}")


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} is defined twice")
        out[name] = body.strip()
    return out


def expand(sql: str) -> str:
    """Replace `{from:OP}` / `{to:OP}` with the state lists of the transition table."""

    def fill(m: re.Match[str]) -> str:
        if m[0] == "{sticky}":
            return "(" + ", ".join(f"'{r}'" for r in sorted(STICKY_REASONS)) + ")"
        if m[0] == "{terminal}":
            return sql_list(TERMINAL)
        t = TRANSITIONS[Op(m[2])]
        states = t.sources if m[1] == "from" else t.to
        if not states:
            raise ValueError(f"{m[0]}: operation {m[2]} has no such states")
        return sql_list(states)

    return _GUARD.sub(fill, sql)


@cache
def raw_queries() -> Mapping[str, str]:
    """The file as written (guards not filled in): what tests read."""
    return parse(resources.files("shared.db").joinpath("queries.sql").read_text("utf-8"))


@cache
def queries() -> Mapping[str, str]:
    return {name: expand(sql) for name, sql in raw_queries().items()}


def q(name: str) -> str:
    return queries()[name]
