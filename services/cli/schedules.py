"""`scns schedule add|list|show|enable|disable|trigger|runs|rm`: cron schedules of jobs.

A schedule's job is built exactly as `scns submit` builds one (the script's #SBATCH and #SCNS
directives, then the command line), less what cannot apply to a job that does not exist yet:
a begin time and a dependency. A schedule is named by its id or by its name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.markup import escape
from rich.table import Table

from services.cli import jobs
from services.cli.arrays import array_note, array_of, fmt_limit
from services.cli.client import ApiError, Client
from services.cli.common import STATE_STYLE, client, emit_json, err, fail, out, warn

# as shared.db.schedules.CONCURRENCY and CATCH_UP (not imported: that module needs asyncpg)
CONCURRENCY = ("forbid", "allow", "replace")
CATCH_UP = ("skip", "once", "all")
RECENT_RUNS = 5  # runs `show` lists
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_STREAK = re.compile(r"(\d+) consecutive failed runs")
_BY = re.compile(r"disabled by (\S+)$")
REF_HELP = "SCHEDULE: a schedule's id or name."
# a directive's value that a schedule's job cannot take, and why
REFUSED = {
    "begin_at": "--begin: a schedule's job begins at each fire time",
    "dependency": "--dependency: each fire makes a new job, so there is nothing to depend on "
                  "(--concurrency says what a run does while the previous one is active)",
}


class NoSuchSchedule(click.ClickException):
    """A SCHEDULE argument that names none of the caller's schedules."""

    def show(self, file: Any = None) -> None:
        fail(self.message)


@contextmanager
def api_errors() -> Iterator[None]:
    """The gateway's refusal as `error: <its message>`, exit 1 (as `scns update` does)."""
    try:
        yield
    except ApiError as e:
        fail(e.message)
        sys.exit(1)


# --- formatting (pure) -----------------------------------------------------------------------
def _zone(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ValueError, OSError):  # unknown here (an older tzdata than the gateway's)
        return UTC


def local_time(iso: str | None, zone: str | None, *, seconds: bool = False) -> str:
    """An API time in the schedule's zone: `2026-11-24 02:30 CET`; `-` when there is none."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(_zone(zone))
    return at.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def short_reason(reason: str | None) -> str:
    """A disabled reason for a table cell: `3 failures in a row`, `by alice`."""
    if not reason:
        return ""
    if m := _STREAK.match(reason):
        return f"{m[1]} failures in a row"
    if m := _BY.match(reason):
        return f"by {m[1]}"
    first = reason.split(";")[0].strip()
    return first if len(first) <= 40 else first[:39] + "…"


def state_text(s: Mapping[str, Any]) -> str:
    if s["enabled"]:
        return "enabled"
    why = short_reason(s.get("disabled_reason"))
    return f"disabled ({why})" if why else "disabled"


def last_text(s: Mapping[str, Any]) -> str:
    """The last runs at a glance: ✓ (no failure streak), ✗ N (N failed in a row), - (never
    ran)."""
    if s.get("consecutive_failures"):
        return f"✗ {s['consecutive_failures']}"
    return "✓" if s.get("run_count") else "-"


def list_columns(items: Sequence[Mapping[str, Any]]) -> list[str]:
    many = len({s["user"] for s in items}) > 1  # an admin's listing: whose is whose
    return ["ID", "NAME", *(["USER"] if many else []), "CRON", "TZ", "NEXT RUN", "LAST", "RUNS",
            "FAIL", "STATE"]


def list_cells(s: Mapping[str, Any], columns: list[str]) -> list[str]:
    cells = {"ID": str(s["id"]), "NAME": s["name"], "USER": s["user"], "CRON": s["cron"],
             "TZ": s["timezone"], "NEXT RUN": local_time(s.get("next_run_at"), s["timezone"]),
             "LAST": last_text(s), "RUNS": str(s["run_count"]),
             "FAIL": str(s["failure_count"]), "STATE": state_text(s)}
    return [cells[c] for c in columns]


def job_summary(job: Mapping[str, Any]) -> str:
    """A schedule's job in one line: `'etl', 4 CPUs, 2048M, 1:00:00, array 0-9%2`."""
    cpus = job.get("cpus") or 1
    parts = [f"'{job.get('name')}'", f"{cpus} CPU{'s' if cpus != 1 else ''}"]
    if job.get("memory_mb"):
        parts.append(f"{job['memory_mb']}M")
    parts.append(fmt_limit(job.get("time_limit")) if job.get("time_limit")
                 else "no time limit")
    if job.get("array"):
        parts.append(f"array {job['array']}")
    if job.get("priority"):
        parts.append(f"priority {job['priority']}")
    if job.get("hold"):
        parts.append("held")
    return ", ".join(parts)


def run_state(run: Mapping[str, Any]) -> str:
    if run.get("skipped"):
        return f"skipped: {run['skipped']}"
    return str(run.get("state") or "")


def run_cells(run: Mapping[str, Any], zone: str | None) -> list[str]:
    return [local_time(run["fire_at"], zone, seconds=True), run["kind"],
            str(run["job_id"]) if run.get("job_id") is not None else "-", run_state(run)]


def show_lines(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`scns schedule show`: (key, value) lines."""
    zone = s["timezone"]
    streak = s.get("consecutive_failures") or 0
    limit = s.get("max_failures")
    runs = (f"{s['run_count']} made, {s['failure_count']} failed, {streak} in a row"
            + (f" (disabled after {limit} in a row)" if limit
               else " (never disabled for failures)"))
    last = local_time(s.get("last_run_at"), zone)
    if s.get("last_job_id") is not None:
        last += f" (job {s['last_job_id']})"
    lines = [
        ("id", str(s["id"])), ("name", s["name"]), ("user", s["user"]),
        ("cron", f"{s['cron']} ({zone})"), ("state", "enabled" if s["enabled"] else "disabled"),
    ]
    if not s["enabled"]:
        lines.append(("disabled_reason", s.get("disabled_reason") or "-"))
    lines += [
        ("next run", local_time(s.get("next_run_at"), zone)), ("last run", last),
        ("runs", runs), ("concurrency", s["concurrency"]), ("catch_up", s["catch_up"]),
        ("job", job_summary(s["job"])),
        ("created", local_time(s.get("created_at"), zone)),
        ("updated", local_time(s.get("updated_at"), zone)),
    ]
    return lines


def schedule_body(name: str, cron: str, job: dict[str, Any], *, timezone: str | None,
                  concurrency: str | None, catch_up: str | None, max_failures: int | None,
                  disabled: bool) -> dict[str, Any]:
    """The POST /schedules body; the gateway's defaults where the command line said nothing."""
    body: dict[str, Any] = {"name": name, "cron": cron, "job": job}
    optional = {"timezone": timezone, "concurrency": concurrency, "catch_up": catch_up,
                "max_failures": max_failures}
    body.update({k: v for k, v in optional.items() if v is not None})
    if disabled:
        body["enabled"] = False
    return body


def refused(job: Mapping[str, Any]) -> str | None:
    """Why a submit body cannot be a schedule's job (a begin time, a dependency), or None."""
    for key, why in REFUSED.items():
        if key in job:
            return why
    return None


def triggered_line(answer: Mapping[str, Any], name: str) -> str:
    """`Submitted batch job 4013 (schedule nightly-etl)`, as sbatch answers."""
    job = answer.get("job") or {}
    summary = array_of(job)
    note = array_note(summary.get("count"), summary.get("throttle")) if summary else ""
    ref = job.get("id", answer["run"].get("job_id"))
    return f"Submitted batch job {ref} (schedule {name}" + (f", {note})" if note else ")")


# --- talking to the gateway ------------------------------------------------------------------
def resolve(c: Client, ref: str) -> dict[str, Any]:
    """The schedule a SCHEDULE argument names: an id, else a name of the caller's (an admin:
    anyone's, if only one user has a schedule of that name)."""
    if ref.isascii() and ref.isdigit():
        try:
            found: dict[str, Any] = c.call("GET", f"/api/v1/schedules/{int(ref)}")
            return found
        except ApiError as e:
            if e.status not in (400, 404):
                raise
            if not _NAME.fullmatch(ref):
                raise NoSuchSchedule(f"schedule {ref} does not exist") from None
            try:
                return _by_name(c, ref)
            except NoSuchSchedule:
                raise NoSuchSchedule(f"schedule {ref} does not exist") from None
    if not _NAME.fullmatch(ref):
        raise NoSuchSchedule(f"{ref!r} is not a schedule id or name (names are 1 to 64 "
                             "letters, digits, '.', '_' or '-'; `scns schedule list` shows "
                             "them)")
    return _by_name(c, ref)


def _by_name(c: Client, name: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = c.call("GET", "/api/v1/schedules",
                                         query={"name": name})["items"]
    if not items:
        raise NoSuchSchedule(f"no schedule named {name!r} (`scns schedule list` shows yours)")
    if len(items) > 1:
        which = ", ".join(f"{s['id']} ({s['user']})" for s in items)
        raise NoSuchSchedule(f"{len(items)} schedules are named {name!r}: {which}; give an id")
    return items[0]


def _table(columns: list[str], right: tuple[str, ...] = ()) -> Table:
    t = Table(box=None, header_style="bold")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    return t


# --- the verbs -------------------------------------------------------------------------------
@click.group("schedule")
def schedule() -> None:
    """Cron schedules: a job made at every fire time (add, list, show, enable, disable,
    trigger, runs, rm)."""


@schedule.command("add", epilog="The script's #SBATCH and #SCNS directives apply to every job "
                  "the schedule makes, as with `scns submit`; options here win over them. "
                  "--begin and --dependency cannot apply to a schedule's jobs.")
@click.argument("name")
@click.argument("script", required=False,
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--cron", required=True, metavar="EXPR",
              help="when: 5 fields (minute hour day-of-month month day-of-week), e.g. "
                   "'30 2 * * *' or '*/15 * * * 1-5', or @hourly, @daily, @weekly, @monthly")
@click.option("--tz", "timezone", metavar="ZONE",
              help="the time zone EXPR is read in, e.g. Europe/Berlin [UTC]")
@click.option("--concurrency", type=click.Choice(CONCURRENCY),
              help="while the previous run is still active: forbid skips the fire, allow "
                   "runs both, replace cancels the previous one [forbid]")
@click.option("--catch-up", "catch_up", type=click.Choice(CATCH_UP),
              help="fire times missed while no scheduler ran: skip them, run the latest "
                   "once, or run all [once]")
@click.option("--max-failures", "max_failures", type=click.IntRange(0, 1000), metavar="N",
              help="disable the schedule after N failed runs in a row; 0: never [3]")
@click.option("--disabled", is_flag=True, help="create it disabled (`scns schedule enable` "
              "starts it)")
@click.option("-c", "--cpus", type=click.IntRange(min=1), help="CPUs for each job [1]")
@click.option("-t", "--time", "time_limit",
              help="each job's time limit: minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED")
@click.option("--mem", help="memory, e.g. 512M or 4G")
@click.option("-J", "--job-name", "job_name", help="the jobs' name [the schedule's name]")
@click.option("-p", "--partition", help="partition(s), comma-separated: any of them")
@click.option("-a", "--array", metavar="INDEXES", help="each run is a job array: 0-99%8, ...")
@click.option("-o", "--output", metavar="PATTERN", help="stdout file on the worker (%j, %x, …)")
@click.option("-e", "--error", metavar="PATTERN", help="stderr file on the worker")
@click.option("-D", "--chdir", metavar="DIR", help="working directory on the worker")
@click.option("--export", metavar="ITEMS", help=jobs.EXPORT_HELP)
@click.option("--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--requeue/--no-requeue", default=None, help="requeue if its worker is lost")
@click.option("-H", "--hold", is_flag=True, default=None, help="make each job held")
@click.option("--priority", type=int, help="0-100, higher runs first [0]")
@click.option("--nice", type=int, metavar="N", help="lower the jobs' priority by N")
@click.option("--retries", type=click.IntRange(0, 10), help="run a failed job again, up to N "
              "times (a run fails only when its last try does)")
@click.option("--retry-delay", "retry_delay", type=click.IntRange(min=0), metavar="SECONDS",
              help="wait between a failure and its retry [0]")
@click.option("--wrap", metavar="COMMAND", help="run COMMAND (in sh) instead of a script")
@click.option("--json", "as_json", is_flag=True, help="print the schedule as JSON")
def add(*, name: str, script: str | None, cron: str, timezone: str | None,
        concurrency: str | None, catch_up: str | None, max_failures: int | None,
        disabled: bool, wrap: str | None, job_name: str | None, time_limit: str | None,
        as_json: bool, **options: Any) -> None:
    """Make schedule NAME: run SCRIPT (like sbatch; - reads it from standard input) at every
    fire time of --cron."""
    job, warnings = jobs.read_submission(
        script, wrap, lambda d: jobs.SubmitOptions(script=script, time=time_limit,
                                                   name=job_name or d.name or name, **options),
        nothing="nothing created")
    why = refused(job)
    if why is not None:
        fail(f"the script's {why}; remove that directive (nothing created)")
        sys.exit(2)
    for warning in warnings:
        warn(warning)
    body = schedule_body(name, cron, job, timezone=timezone, concurrency=concurrency,
                         catch_up=catch_up, max_failures=max_failures, disabled=disabled)
    try:
        made = client().call("POST", "/api/v1/schedules", body)
    except ApiError as e:
        fail(f"{e.message} (nothing created)" if 400 <= e.status < 500 else str(e))
        sys.exit(1)
    if as_json:
        emit_json(made)
        return
    when = (f"next run {local_time(made['next_run_at'], made['timezone'])}" if made["enabled"]
            else "disabled (`scns schedule enable` starts it)")
    click.echo(f"Created schedule {made['id']} ({made['name']}): {made['cron']} "
               f"({made['timezone']}), {when}")


@schedule.command("list")
@click.option("-u", "--user", help="only this user's schedules (admins)")
@click.option("-n", "--name", help="only schedules with this name")
@click.option("--json", "as_json", is_flag=True, help="the schedules as JSON")
def list_(user: str | None, name: str | None, as_json: bool) -> None:
    """List schedules: when each fires next, how its last runs went."""
    c = client()
    items: list[dict[str, Any]] = []
    with api_errors():
        for page, _ in c.pages("/api/v1/schedules", {"user": user, "name": name}):
            items += page
    if as_json:
        emit_json({"items": items, "next_cursor": None})
        return
    if not items:
        err.print("no schedules (`scns schedule add NAME --cron EXPR SCRIPT` makes one)")
        return
    columns = list_columns(items)
    t = _table(columns, right=("ID", "RUNS", "FAIL"))
    for s in items:
        cells = [escape(cell) for cell in list_cells(s, columns)]
        last, state = columns.index("LAST"), columns.index("STATE")
        if cells[last] != "-":
            cells[last] = f"[{'red' if s['consecutive_failures'] else 'green'}]{cells[last]}[/]"
        cells[state] = f"[{'green' if s['enabled'] else 'yellow'}]{cells[state]}[/]"
        t.add_row(*cells)
    out.print(t)


@schedule.command("show", epilog=REF_HELP)
@click.argument("ref", metavar="SCHEDULE")
@click.option("--json", "as_json", is_flag=True, help="the schedule as JSON")
def show(ref: str, as_json: bool) -> None:
    """Show one schedule in full, with its last few runs."""
    c = client()
    with api_errors():
        s = c.call("GET", f"/api/v1/schedules/{resolve(c, ref)['id']}")
        recent = c.call("GET", f"/api/v1/schedules/{s['id']}/runs",
                        query={"limit": RECENT_RUNS})["items"]
    if as_json:
        emit_json({**s, "runs": recent})
        return
    width = max(len(k) for k, _ in show_lines(s)) + 2
    for key, value in show_lines(s):
        click.echo(f"{key + ':':<{width}}{value}")
    if recent:
        click.echo("recent runs:")
        _print_runs(recent, s["timezone"])


def _print_runs(runs: list[dict[str, Any]], zone: str) -> None:
    t = _table(["FIRE TIME", "KIND", "JOB", "STATE"], right=("JOB",))
    for run in runs:
        cells = [escape(cell) for cell in run_cells(run, zone)]
        style = "dim" if run.get("skipped") else STATE_STYLE.get(run.get("state") or "", "")
        if style:
            cells[3] = f"[{style}]{cells[3]}[/]"
        t.add_row(*cells)
    out.print(t)


def _each(refs: tuple[str, ...], act: Callable[[Client, dict[str, Any]], None]) -> None:
    """`act` on every schedule named; one error line for each that fails, exit 1 at the end."""
    c = client()
    failed = False
    for ref in refs:
        try:
            act(c, resolve(c, ref))
        except ApiError as e:
            fail(e.message)
            failed = True
        except NoSuchSchedule as e:
            fail(e.message)
            failed = True
    if failed:
        sys.exit(1)


@schedule.command("enable", epilog=REF_HELP)
@click.argument("refs", metavar="SCHEDULE...", nargs=-1, required=True)
def enable(refs: tuple[str, ...]) -> None:
    """Start schedules again, from their next fire time (missed ones are not caught up; the
    failure streak starts from 0)."""
    def act(c: Client, s: dict[str, Any]) -> None:
        on = c.call("POST", f"/api/v1/schedules/{s['id']}/enable")
        click.echo(f"schedule {on['id']} ({on['name']}) enabled: next run "
                   f"{local_time(on['next_run_at'], on['timezone'])}")

    _each(refs, act)


@schedule.command("disable", epilog=REF_HELP)
@click.argument("refs", metavar="SCHEDULE...", nargs=-1, required=True)
def disable(refs: tuple[str, ...]) -> None:
    """Stop schedules firing (jobs they made carry on)."""
    def act(c: Client, s: dict[str, Any]) -> None:
        off = c.call("POST", f"/api/v1/schedules/{s['id']}/disable")
        click.echo(f"schedule {off['id']} ({off['name']}) disabled")

    _each(refs, act)


@schedule.command("trigger", epilog=REF_HELP)
@click.argument("ref", metavar="SCHEDULE")
@click.option("--json", "as_json", is_flag=True, help="the run and its job as JSON")
def trigger(ref: str, as_json: bool) -> None:
    """Run a schedule's job now (its cron times are unchanged). With --concurrency=forbid and
    a run still active, nothing is made and the exit status is 1."""
    c = client()
    try:
        s = resolve(c, ref)
        answer = c.call("POST", f"/api/v1/schedules/{s['id']}/trigger")
    except ApiError as e:
        fail(e.message)
        sys.exit(1)
    if as_json:
        emit_json(answer)
        return
    click.echo(triggered_line(answer, s["name"]))


@schedule.command("runs", epilog=REF_HELP)
@click.argument("ref", metavar="SCHEDULE")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="the last N runs")
@click.option("--json", "as_json", is_flag=True, help="the runs as JSON")
def runs(ref: str, limit: int, as_json: bool) -> None:
    """A schedule's runs, newest first: fire time, kind, job, its state (or why it was
    skipped)."""
    c = client()
    with api_errors():
        s = resolve(c, ref)
        page = c.collect(f"/api/v1/schedules/{s['id']}/runs", {}, limit)
    if as_json:
        emit_json(page)
        return
    if not page["items"]:
        err.print(f"schedule {s['id']} ({s['name']}) has not run yet; next run "
                  f"{local_time(s.get('next_run_at'), s['timezone'])}")
        return
    _print_runs(page["items"], s["timezone"])


@schedule.command("rm", epilog=REF_HELP)
@click.argument("refs", metavar="SCHEDULE...", nargs=-1, required=True)
def rm(refs: tuple[str, ...]) -> None:
    """Delete schedules and their run history (the jobs they made carry on; `scns cancel`
    stops those)."""
    def act(c: Client, s: dict[str, Any]) -> None:
        c.call("DELETE", f"/api/v1/schedules/{s['id']}")
        click.echo(f"schedule {s['id']} ({s['name']}) deleted")

    _each(refs, act)
