"""Job control and accounting verbs: hold, release, requeue, update (scontrol), history (sacct)
and eff (seff). Registered on the `scns` group by main.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from services.cli.accounting import eff_lines, efficiency, fmt_duration, history_row
from services.cli.client import ApiError
from services.cli.common import (
    BEGIN,
    MEMORY,
    STATE_STYLE,
    WINDOW,
    client,
    emit_json,
    err,
    fail,
    out,
)
from services.cli.directives import DirectiveError, local_zone, parse_time, to_utc_iso

MAX_PAGE = 1000  # the gateway's largest page
SHORT_STATES = {"PD": "PENDING", "CF": "ALLOCATED", "R": "RUNNING", "CD": "COMPLETED",
                "F": "FAILED", "CA": "CANCELLED", "TO": "TIMEOUT", "NF": "NODE_FAIL",
                "OOM": "OUT_OF_MEMORY"}


def _each(job_ids: tuple[int, ...], verb: str,
          describe: Callable[[int, dict[str, Any]], str]) -> None:
    """POST /jobs/{id}/{verb} for every job: one line each; exit 1 at the end if any failed."""
    c = client()
    failed = False
    for jid in job_ids:
        try:
            job = c.call("POST", f"/api/v1/jobs/{jid}/{verb}")
        except ApiError as e:
            failed = True
            fail(e.message)
            continue
        click.echo(describe(jid, job))
    if failed:
        sys.exit(1)


@click.command()
@click.argument("job_ids", type=int, nargs=-1, required=True)
def hold(job_ids: tuple[int, ...]) -> None:
    """Keep pending jobs from starting until they are released (like scontrol hold)."""
    _each(job_ids, "hold", lambda jid, _job: f"job {jid} held")


@click.command()
@click.argument("job_ids", type=int, nargs=-1, required=True)
def release(job_ids: tuple[int, ...]) -> None:
    """Let held jobs start again (like scontrol release)."""
    _each(job_ids, "release", lambda jid, _job: f"job {jid} released")


def _requeued(jid: int, job: dict[str, Any]) -> str:
    if job["state"] in ("ALLOCATED", "RUNNING") or job.get("requeue_requested"):
        return f"job {jid} requeue requested: it is stopped, then runs again"
    return f"job {jid} requeued (attempt {job['attempt']})"


@click.command()
@click.argument("job_ids", type=int, nargs=-1, required=True)
def requeue(job_ids: tuple[int, ...]) -> None:
    """Run finished or running jobs again as a new attempt (like scontrol requeue)."""
    _each(job_ids, "requeue", _requeued)


@click.command()
@click.argument("job_id", type=int)
@click.option("--priority", type=int, help="0-100, higher runs first")
@click.option("-t", "--time", "time_limit", metavar="TIME",
              help="time limit: minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED")
@click.option("-c", "--cpus", type=click.IntRange(min=1), help="CPUs")
@click.option("--mem", type=MEMORY, help="memory, e.g. 512M or 4G")
@click.option("-J", "--name", help="job name")
@click.option("-b", "--begin", type=BEGIN,
              help="start no earlier than: now+1hour, 14:30, 2026-11-24T02:30")
def update(*, job_id: int, priority: int | None, time_limit: str | None, cpus: int | None,
           mem: int | None, name: str | None, begin: datetime | None) -> None:
    """Change a pending job (like scontrol update)."""
    body: dict[str, Any] = {}
    if priority is not None:
        body["priority"] = priority
    if time_limit is not None:
        try:
            body["time_limit"] = parse_time(time_limit)  # None (UNLIMITED) removes the limit
        except DirectiveError as e:
            raise click.BadParameter(str(e), param_hint="'--time'") from e
    if cpus is not None:
        body["cpus"] = cpus
    if mem is not None:
        body["memory_mb"] = mem
    if name is not None:
        body["name"] = name
    if begin is not None:
        body["begin_at"] = to_utc_iso(begin)
    if not body:
        raise click.UsageError("nothing to update: give at least one of --priority, --time, "
                               "--cpus, --mem, --name, --begin")
    try:
        job = client().call("PATCH", f"/api/v1/jobs/{job_id}", body)
    except ApiError as e:
        fail(e.message)
        sys.exit(1)
    click.echo(f"job {job_id} updated: " + " ".join(_changed(body, job)))


def _changed(body: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """The fields that were sent, as the job now has them."""
    shown = []
    for key in body:
        value = job.get(key)
        if key == "time_limit":
            shown.append(f"time={fmt_duration(value) if value is not None else 'UNLIMITED'}")
        elif key == "memory_mb":
            shown.append(f"mem={value}M")
        elif key == "begin_at":
            shown.append(f"begin={_local(value)}")
        else:
            shown.append(f"{key}={value}")
    return shown


def _local(iso: str | None) -> str:
    if not iso:
        return "now"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(local_zone()) \
        .strftime("%Y-%m-%d %H:%M:%S %Z")


def _states(text: str | None) -> str | None:
    if not text:
        return None
    names = [s.strip().upper() for s in text.split(",") if s.strip()]
    return ",".join(SHORT_STATES.get(n, n) for n in names) or None


@click.command()
@click.option("-u", "--user", help="only this user's jobs")
@click.option("-S", "--starttime", "start", type=WINDOW,
              help="jobs in the system from: 2026-11-20, 09:00, now-2hours [midnight today]")
@click.option("-E", "--endtime", "end", type=WINDOW, help="jobs in the system until [now]")
@click.option("-s", "--state", "states", help="states, comma-separated (e.g. FAILED,TIMEOUT)")
@click.option("-n", "--name", help="only jobs with this name")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the page as JSON")
def history(*, user: str | None, start: datetime | None, end: datetime | None,
            states: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """Finished and running jobs in a time window, newest first (like sacct)."""
    now = datetime.now(local_zone())
    since = start or datetime.combine(now.date(), datetime.min.time(), tzinfo=now.tzinfo)
    query: dict[str, Any] = {"user": user, "state": _states(states), "name": name,
                             "since": to_utc_iso(since),
                             "until": to_utc_iso(end) if end is not None else None}
    c = client()
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = c.call("GET", "/api/v1/jobs",
                      query={**query, "limit": min(MAX_PAGE, limit - len(items)),
                             "cursor": cursor})
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor or len(items) >= limit:
            break
    if as_json:
        emit_json({"items": items, "next_cursor": cursor})
        return
    if not items:
        err.print(f"no jobs since {since.astimezone(now.tzinfo):%Y-%m-%d %H:%M} "
                  "(-S looks further back, e.g. -S now-7days)")
        return
    t = Table(box=None, header_style="bold")
    for col in ("JOBID", "NAME", "ST", "ATTEMPT", "ELAPSED", "CPUS", "MAXRSS", "EXIT",
                "WORKER"):
        t.add_column(col, justify="right" if col in ("ATTEMPT", "ELAPSED", "CPUS") else "left")
    for job in items:
        row = [escape(cell) for cell in history_row(job, now)]
        row[2] = f"[{STATE_STYLE.get(job['state'], '')}]{row[2]}[/]"
        t.add_row(*row)
    out.print(t)
    if cursor:
        err.print(f"(first {len(items)} jobs; --limit shows more)")


@click.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def eff(job_id: int, as_json: bool) -> None:
    """How well a job used what it asked for: CPU and memory efficiency (like seff)."""
    page = client().call("GET", f"/api/v1/jobs/{job_id}/attempts")
    job, attempts = page["job"], page["items"]
    if as_json:
        emit_json(efficiency(job, attempts))
        return
    for line in eff_lines(job, attempts):
        click.echo(line)


COMMANDS = (hold, release, requeue, update, history, eff)
