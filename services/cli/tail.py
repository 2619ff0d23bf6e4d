"""`scns tail`: follow the event streams, like stern or kcat.

Two ways in, one output. With `SCNS_REDIS_URL` set (an operator beside the services) it reads
the streams directly (shared/tail.py; with `SCNS_DATABASE_URL` too, job events say whose job
and which array element); otherwise it reads the gateway's `GET /api/v1/events` with the
caller's token, and sees what that token may see. Either way it reads with XRANGE/XREAD, never
through a consumer group, so tailing cannot take an event from a service.

`-o text` is one line per event (colour on a terminal), `-o json` one JSON object per line
(for jq). `--lag` shows each consumer group's backlog instead: the answer to "why is nothing
moving?".
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson
from rich.markup import escape
from rich.table import Table

from services.cli.client import RETRY_AFTER_MAX_S, ApiError, Client, retryable
from services.cli.common import JOB, STATE_STYLE, TERMINAL, client, out, warn
from services.cli.directives import local_zone
from shared.errors import ConductorError
from shared.tail import TYPES, PositionError, Start, time_ms

DEFAULT_LAST = 10  # like tail(1): the last 10 events, then (with -f) what comes
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_CLOCK = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
TYPE_STYLE = {"job": "cyan", "worker": "magenta", "schedule": "yellow"}
SLOW_PENDING_S = 10.0  # an entry delivered this long ago and not acknowledged: a slow consumer


# ---------------------------------------------------------------------------- --from parsing


def parse_from(text: str | None, now: datetime) -> Start:
    """`--from`: a stream id, `-N`, an ISO time or a clock time (local when no zone is given),
    a duration back from now (`10m`, `2h`, `90s`, `1d`), `now`, or `0` (the beginning)."""
    if text is None:
        return Start(last=DEFAULT_LAST)
    text = text.strip()
    if m := _DURATION.match(text):
        back = timedelta(seconds=float(m[1]) * _UNITS[m[2]])
        return Start(at_ms=int((now - back).timestamp() * 1000))
    if _CLOCK.match(text):
        try:
            clock = datetime.strptime(text + (":00" if text.count(":") == 1 else ""),
                                      "%H:%M:%S.%f" if "." in text else "%H:%M:%S")
        except ValueError:
            raise PositionError(f"--from {text!r}: not a time of day (HH:MM[:SS[.fff]])"
                                ) from None
        when = now.astimezone(local_zone()).replace(
            hour=clock.hour, minute=clock.minute, second=clock.second,
            microsecond=clock.microsecond)
        return Start(at_ms=time_ms(when, text))
    if re.match(r"^\d{4}-\d{2}-\d{2}", text):
        try:
            when = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise PositionError(f"--from {text!r}: not an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=local_zone())
        return Start(at_ms=time_ms(when, text))
    return Start.parse(text)


def start_query(start: Start) -> str:
    """The gateway's `from` for a start (it takes ids, -N, UTC ISO times and now)."""
    if start.position is not None:
        return start.position.token()
    if start.at_ms is not None:
        when = datetime.fromtimestamp(start.at_ms / 1000, UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if start.last is not None:
        return f"-{start.last}"
    return "now"


# ------------------------------------------------------------------------------ formatting


def _job_ref(e: Mapping[str, Any]) -> str:
    job = e.get("job")
    if isinstance(job, dict) and job.get("ref"):
        return str(job["ref"])
    return str(e.get("job_id", "?"))


def _kv(e: Mapping[str, Any], *names: str) -> list[str]:
    return [f"{n}={e[n]}" for n in names if e.get(n) is not None]


def _finished(e: Mapping[str, Any], ref: str) -> list[str]:
    parts = [ref, str(e.get("state"))]
    if e.get("exit_code") is not None:
        parts.append(f"exit={e['exit_code']}")
    parts += _kv(e, "signal")
    if e.get("worker_id") is not None:
        parts.append(f"worker={e['worker_id']}")
    parts += _kv(e, "reason")
    if isinstance(e.get("elapsed_s"), int | float):
        parts.append(f"{e['elapsed_s']:.1f}s")
    if e.get("next_attempt") is not None:
        parts.append(f"→ attempt {e['next_attempt']}")
    return parts


def _fired(e: Mapping[str, Any], _: str) -> list[str]:
    what = f"job={e['job_id']}" if e.get("job_id") is not None else f"skipped={e.get('skipped')}"
    return [str(e.get("name")), what, *_kv(e, "kind", "fire_at", "user")]


def _placed(e: Mapping[str, Any], ref: str) -> list[str]:
    return [ref, f"worker={e.get('worker_id')}", *_kv(e, "attempt", "cpus", "pid")]


SUMMARIES: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "job-finished": _finished,
    "job-submitted": lambda e, ref: [ref, f"cpus={e.get('cpus')}",
                                     *_kv(e, "memory_mb", "array_size", "priority")],
    "job-allocated": _placed,
    "job-started": _placed,
    "job-requeued": lambda e, ref: [ref, *_kv(e, "attempt", "reason")],
    "job-updated": lambda e, ref: [ref, str(e.get("change")), *_kv(e, "reason", "count")],
    "worker-joined": lambda e, _: [str(e.get("worker_id")),
                                   *_kv(e, "cpus", "memory_mb", "hostname")],
    "worker-left": lambda e, _: [str(e.get("worker_id")), *_kv(e, "reason")],
    "schedule-fired": _fired,
    "schedule-disabled": lambda e, _: [str(e.get("name")), *_kv(e, "reason", "user")],
}
_NOT_SHOWN = frozenset({"type", "v", "id", "at", "stream_id", "job"})


def summary(e: Mapping[str, Any]) -> list[str]:
    """The words after the time and the type, per event type; the other fields as k=v."""
    if "undecodable" in e:  # shown as it is in the stream
        return ["undecodable:", str(e["undecodable"])[:200]]
    fn = SUMMARIES.get(str(e.get("type", "")))
    if fn is not None:
        return fn(e, _job_ref(e))
    return [f"{k}={v}" for k, v in e.items() if k not in _NOT_SHOWN]


def clock_of(e: Mapping[str, Any]) -> str:
    stream_id = str(e.get("stream_id", ""))
    ms = int(stream_id.partition("-")[0]) if stream_id[:1].isdigit() else int(
        float(e.get("at", 0)) * 1000)
    when = datetime.fromtimestamp(ms / 1000, local_zone())
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def text_line(e: Mapping[str, Any], *, color: bool, ids: bool = False) -> str:
    """`13:02:11.204  job-finished       4013_612  COMPLETED  exit=0  worker=arm-node-07  1.9s`"""
    kind = str(e.get("type", ""))
    when = (f"{e.get('stream_id', '')}  " if ids else "") + clock_of(e)
    words = summary(e)
    if not color:
        return f"{when}  {kind:<17}  " + "  ".join(words)
    painted = [click.style(w, fg=STATE_STYLE[w], bold=True) if w in STATE_STYLE else w
               for w in words]
    style = TYPE_STYLE.get(kind.split("-", maxsplit=1)[0], "white")
    return (click.style(when, dim=True) + "  " + click.style(f"{kind:<17}", fg=style) + "  "
            + "  ".join(painted))


def json_line(e: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(e)).decode()


# ---------------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class Request:
    types: tuple[str, ...]
    start: Start
    follow: bool
    job: str | None
    worker: str | None
    where: tuple[str, ...]


def sse_events(chunks: Iterable[bytes]
               ) -> Iterator[tuple[str | None, dict[str, Any] | None]]:
    """(id, data) of each message in a Server-Sent Events byte stream (data None: an id
    alone)."""
    buf = b""
    event_id: str | None = None
    data: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if data or event_id is not None:  # an id alone moves the resume point
                    yield event_id, orjson.loads(b"\n".join(data)) if data else None
                event_id, data = None, []
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"id:"):
                event_id = line[3:].removeprefix(b" ").decode()


def from_gateway(c: Client, req: Request, *, sleep: Callable[[float], None] = time.sleep
                 ) -> Iterator[dict[str, Any]]:
    """Events through the gateway; with -f, a dropped connection resumes after the last id."""
    query: dict[str, Any] = {"types": ",".join(req.types) if req.types else None,
                             "from": start_query(req.start), "job": req.job,
                             "worker": req.worker, "follow": "1" if req.follow else "0"}
    if req.where:
        query["where"] = list(req.where)
    last: str | None = None
    delay = 0.5
    while True:
        headers = {"Last-Event-ID": last} if last else None
        try:
            for event_id, data in sse_events(c.stream("/api/v1/events", query,
                                                      headers=headers)):
                last = event_id or last
                delay = 0.5
                if data is not None:
                    yield data
            if not req.follow:
                return
        except ApiError as e:
            if not req.follow or e.status not in (502, 503, 504):
                raise
            warn(f"{e.message}; retrying")
        except (ConductorError, OSError) as e:
            if not req.follow:
                raise
            warn(f"the event stream broke ({e}); resuming")
        sleep(delay)
        delay = min(delay * 2, 5.0)


def follow_log(c: Client, job_id: str, stream: str, write: Callable[[bytes], None], *,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """`scns logs -f`: an attempt's output as it comes, until the attempt ends. A follow the
    gateway ended first (after SCNS_FOLLOW_MAX_S) or that broke (a gateway restart) resumes
    after the bytes already written, so a long job is followed to its end, each byte once."""
    path = f"/api/v1/jobs/{job_id}/log"
    attempt = c.call("GET", f"/api/v1/jobs/{job_id}")["attempt"]
    query = {"stream": stream, "attempt": attempt}
    got = 0
    delay = 0.5
    while True:
        try:
            for chunk in c.stream(path, {**query, "follow": "1", "offset": got}):
                write(chunk)
                got += len(chunk)
                delay = 0.5
            # the follow ended: with the attempt, or first (its time was up). What the
            # attempt wrote since, and what it writes until its end, is still to come
            job = c.call("GET", f"/api/v1/jobs/{job_id}")
            if job["state"] in TERMINAL or job["attempt"] != attempt:
                for chunk in c.stream(path, {**query, "offset": got}):  # bytes as they are
                    write(chunk)
                    got += len(chunk)
                return
        except ApiError as e:
            if not retryable(e):
                raise
            warn(f"{e.message}; retrying")
            sleep(max(delay, min(e.retry_after_s or 0.0, RETRY_AFTER_MAX_S)))
            delay = min(delay * 2, 5.0)
        except (ConductorError, OSError, http.client.HTTPException) as e:
            warn(f"the log follow broke ({e}); resuming")
            sleep(delay)
            delay = min(delay * 2, 5.0)


def from_redis(env: Mapping[str, str], req: Request, emit: Callable[[dict[str, Any]], None]
               ) -> None:
    """Events read straight from the streams, each handed to `emit` as it comes."""

    async def run() -> None:
        # Ctrl-C (or SIGTERM) sets `stop` and the reader ends within a second: the blocking
        # read is never cancelled, so no Redis call is left half done
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a background job ignores ^C
                loop.add_signal_handler(sig, stop.set)
        async for e in _redis_events(env, req, stop):
            emit(e)

    asyncio.run(run())


async def _redis_events(env: Mapping[str, str], req: Request, stop: asyncio.Event
                        ) -> AsyncIterator[dict[str, Any]]:
    from shared.arrays import parse_ref
    from shared.db.pool import create_pool
    from shared.keys import Keys
    from shared.redis import connect
    from shared.settings import Settings
    from shared.tail import Filter, JobDirectory, StreamReader, enriched, parse_where

    settings = Settings.from_env(env)
    redis = connect(settings.redis_url, name="scns-tail", max_connections=4)
    pool = await create_pool(settings.database_url, min_size=1, max_size=2) \
        if env.get("SCNS_DATABASE_URL") else None
    try:
        directory = JobDirectory(pool) if pool is not None else None
        flt = Filter(types=frozenset(req.types or TYPES), worker=req.worker,
                     where=parse_where(req.where))
        if req.job is not None:
            flt = await _job_filter(flt, parse_ref(req.job), pool)
        reader = StreamReader(redis, Keys(settings.key_prefix), sorted(flt.types))
        after = await reader.resolve(req.start)
        until = None if req.follow else await reader.end()
        async for e in reader.follow(after, until=until, stop=stop):
            jobs = await directory.enrich([e]) if directory is not None else {}
            job = jobs.get(e.job_id) if e.job_id is not None else None
            if flt.matches(e, job):
                yield enriched(e, job)
    finally:
        await redis.aclose()
        if pool is not None:
            await pool.close()


async def _job_filter(flt: Any, ref: Any, pool: Any) -> Any:
    from shared.db.jobs import JobStore

    if pool is None:
        if ref.index is not None:
            raise ConductorError(f"--job {ref}: naming an array element needs "
                                 "SCNS_DATABASE_URL (or tail through the gateway)")
        return dataclasses.replace(flt, job_ids=frozenset({ref.id}))
    jobs = JobStore(pool)
    job = await (jobs.get(ref.id) if ref.index is None else jobs.element(ref.id, ref.index))
    if job is None:
        raise ConductorError(f"job {ref} does not exist")
    array_id = job.id if ref.index is None and job.array_job_id == job.id else None
    return dataclasses.replace(flt, job_ids=frozenset({job.id}), array_id=array_id)


# ------------------------------------------------------------------------------------- lag


def lag_rows_redis(env: Mapping[str, str]) -> list[dict[str, Any]]:
    from shared.keys import Keys
    from shared.redis import connect
    from shared.settings import Settings
    from shared.streaminfo import stream_groups

    async def read() -> list[dict[str, Any]]:
        settings = Settings.from_env(env)
        redis = connect(settings.redis_url, name="scns-tail", max_connections=2)
        try:
            groups = await stream_groups(redis, Keys(settings.key_prefix))
        finally:
            await redis.aclose()
        return [dataclasses.asdict(g) for g in groups]

    return asyncio.run(read())


def lag_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("STREAM", "left"), ("GROUP", "left"), ("CONSUMERS", "right"),
                          ("PENDING", "right"), ("LAG", "right"), ("OLDEST PENDING", "right"),
                          ("", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        oldest = r.get("oldest_pending_s")
        lag = r.get("lag")
        slow = (lag or 0) > 0 or (oldest is not None and oldest >= SLOW_PENDING_S)
        table.add_row(escape(r["stream"]), escape(r["group"]), str(r["consumers"]),
                      str(r["pending"]), "?" if lag is None else str(lag),
                      "-" if oldest is None else f"{oldest:.1f}s",
                      "[yellow]← slow consumer[/]" if slow else "")
    return table


# ---------------------------------------------------------------------------------- command


def _direct(env: Mapping[str, str]) -> bool:
    return bool(env.get("SCNS_REDIS_URL"))


@click.command("tail", epilog="TYPE: " + ", ".join(TYPES) + ". --from: a stream id "
               "(1764680531204-0), -N (the last N), a time (13:02, 2026-12-02T13:02:11Z), "
               "a duration back (10m, 2h), now, or 0 (the start); default: the last 10. "
               "Reads Redis directly when SCNS_REDIS_URL is set, else the gateway.")
@click.argument("types", nargs=-1, metavar="[TYPE]...")
@click.option("-f", "--follow", is_flag=True, help="keep printing new events until Ctrl-C")
@click.option("--from", "start", metavar="ID|TIME|-N", help="where to start (see below)")
@click.option("--job", type=JOB, help="one job's events (an array's id: all its elements)")
@click.option("--worker", metavar="W", help="one worker's events")
@click.option("--where", multiple=True, metavar="FIELD=VALUE",
              help="only events whose field has this value (e.g. state=FAILED, job.user=ann)")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="one line per event, or one JSON object per line")
@click.option("--ids", is_flag=True, help="start each text line with the event's stream id")
@click.option("--lag", is_flag=True,
              help="each consumer group's pending entries and lag, instead of events")
def tail(*, types: tuple[str, ...], follow: bool, start: str | None, job: str | None,
         worker: str | None, where: tuple[str, ...], fmt: str, ids: bool, lag: bool) -> None:
    """Follow the event streams (like stern or kcat)."""
    env = os.environ
    if lag:
        _show_lag(env, as_json=fmt == "json")
        return
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise click.UsageError(f"unknown event type {unknown[0]!r}; one of {', '.join(TYPES)}")
    try:
        begin = parse_from(start, datetime.now(UTC))
    except PositionError as e:
        raise click.BadParameter(str(e), param_hint="--from") from None
    req = Request(types=tuple(types), start=begin, follow=follow, job=job, worker=worker,
                  where=where)
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in env
    signal.signal(signal.SIGTERM, _interrupted)  # like Ctrl-C: stop cleanly, exit 0

    def emit(event: dict[str, Any]) -> None:
        click.echo(json_line(event) if fmt == "json" else text_line(event, color=color, ids=ids))
        sys.stdout.flush()  # a line as it happens, also into a pipe (| jq, | grep)

    try:
        if _direct(env):
            from_redis(env, req, emit)
        else:
            for event in from_gateway(client(), req):
                emit(event)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `scns tail ... | head`
        sys.stderr.close()
        return


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _show_lag(env: Mapping[str, str], *, as_json: bool) -> None:
    rows = lag_rows_redis(env) if _direct(env) else client().call(
        "GET", "/api/v1/streams")["items"]
    if as_json:
        for r in rows:
            click.echo(orjson.dumps(r).decode())
        return
    if not rows:
        out.print("no consumer groups yet (no service has read a stream)")
        return
    out.print(lag_table(rows))
