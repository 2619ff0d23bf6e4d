"""What the `scns` commands share: the consoles, the API client, JSON output, one-line errors,
and click parameter types for Slurm's time formats."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import click
import orjson
from rich.console import Console

from services.cli.client import DEFAULT_URL, Client, find_token
from services.cli.directives import (
    DirectiveError,
    local_zone,
    parse_begin,
    parse_memory,
    parse_window,
)
from shared.arrays import SpecError, parse_ref

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
STATE_STYLE = {"PENDING": "yellow", "ALLOCATED": "cyan", "RUNNING": "blue", "COMPLETED": "green",
               "FAILED": "red", "CANCELLED": "magenta", "TIMEOUT": "red", "NODE_FAIL": "red",
               "OUT_OF_MEMORY": "red"}

out = Console()
if not out.is_terminal and "COLUMNS" not in os.environ:
    out = Console(width=1024)  # piped: a table row stays one line instead of wrapping at 80
err = Console(stderr=True)


def client() -> Client:
    return Client(os.environ.get("SCNS_URL", DEFAULT_URL), token=find_token(os.environ))


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def fail(message: str) -> None:
    """`error: <message>` on stderr, one line, red on a terminal (the caller picks the exit)."""
    click.echo(f"{click.style('error:', fg='red', bold=True)} {message}", err=True)


def warn(message: str) -> None:
    """`warning: <message>` on stderr, one line, yellow on a terminal."""
    click.echo(f"{click.style('warning:', fg='yellow', bold=True)} {message}", err=True)


class _Parsed(click.ParamType[Any]):
    """A click type over one of the pure parsers in directives.py."""

    def parse(self, value: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except DirectiveError as e:
            self.fail(str(e), param, ctx)


class BeginTime(_Parsed):
    name = "when"

    def parse(self, value: str) -> datetime:
        return parse_begin(value, datetime.now(local_zone()))


class WindowTime(_Parsed):
    name = "when"

    def parse(self, value: str) -> datetime:
        return parse_window(value, datetime.now(local_zone()))


class Memory(_Parsed):
    name = "size"

    def parse(self, value: str) -> int:
        return parse_memory(value)


class OneLineError(click.BadParameter):
    """A bad argument reported the way every error is: `error: <what is right>`, one line."""

    def show(self, file: Any = None) -> None:
        fail(self.message)


class JobRef(click.ParamType[str]):
    """A job reference: `12` (a job, or every element of array 12) or `12_3` (element 3 of
    array 12), as the API paths take it."""

    name = "job"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        try:
            return str(parse_ref(str(value)))
        except SpecError as e:
            raise OneLineError(str(e), ctx=ctx, param=param) from None


BEGIN = BeginTime()
WINDOW = WindowTime()
MEMORY = Memory()
JOB = JobRef()
