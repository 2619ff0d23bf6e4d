"""Job control and accounting verbs: hold, release, requeue, update (scontrol), history (sacct)
and eff (seff), registered on the `scns` group by main.py; and the body of a submit, built from
a script's directives and the command line (pure)."""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from services.cli.accounting import eff_lines, efficiency, fmt_duration, history_row
from services.cli.arrays import array_control_line, is_array_answer
from services.cli.client import MAX_PAGE, ApiError
from services.cli.common import (
    BEGIN,
    JOB,
    MEMORY,
    STATE_STYLE,
    WINDOW,
    client,
    emit_json,
    err,
    fail,
    out,
)
from services.cli.directives import (
    DirectiveError,
    Directives,
    local_zone,
    parse_directives,
    parse_memory,
    parse_time,
    to_utc_iso,
)
from shared.arrays import SpecError, parse_array
from shared.dependencies import parse_dependency

SHORT_STATES = {"PD": "PENDING", "CF": "ALLOCATED", "R": "RUNNING", "CD": "COMPLETED",
                "F": "FAILED", "CA": "CANCELLED", "TO": "TIMEOUT", "NF": "NODE_FAIL",
                "OOM": "OUT_OF_MEMORY"}


def control_each(refs: tuple[str, ...], method: str, verb: str,
                 describe: Callable[[str, dict[str, Any]], str]) -> None:
    """One control request per job reference: one line each (`array 12: …` for an array-wide
    answer); exit 1 at the end if any failed."""
    c = client()
    failed = False
    for ref in refs:
        path = f"/api/v1/jobs/{ref}" if method == "DELETE" else f"/api/v1/jobs/{ref}/{verb}"
        try:
            answer = c.call(method, path)
        except ApiError as e:
            failed = True
            fail(e.message)
            continue
        click.echo(array_control_line(verb, answer) if is_array_answer(answer)
                   else describe(ref, answer))
    if failed:
        sys.exit(1)


REFS = "JOB_ID: a job (12), an array's every element (12) or one element (12_3)."


@click.command(epilog=REFS)
@click.argument("job_ids", type=JOB, nargs=-1, required=True)
def hold(job_ids: tuple[str, ...]) -> None:
    """Keep pending jobs from starting until they are released (like scontrol hold)."""
    control_each(job_ids, "POST", "hold", lambda ref, _job: f"job {ref} held")


@click.command(epilog=REFS)
@click.argument("job_ids", type=JOB, nargs=-1, required=True)
def release(job_ids: tuple[str, ...]) -> None:
    """Let held jobs start again (like scontrol release)."""
    control_each(job_ids, "POST", "release", lambda ref, _job: f"job {ref} released")


def _requeued(ref: str, job: dict[str, Any]) -> str:
    if job["state"] in ("ALLOCATED", "RUNNING") or job.get("requeue_requested"):
        return f"job {ref} requeue requested: it is stopped, then runs again"
    return f"job {ref} requeued (attempt {job['attempt']})"


@click.command(epilog="JOB_ID: a job (12) or one array element (12_3).")
@click.argument("job_ids", type=JOB, nargs=-1, required=True)
def requeue(job_ids: tuple[str, ...]) -> None:
    """Run finished or running jobs again as a new attempt (like scontrol requeue)."""
    control_each(job_ids, "POST", "requeue", _requeued)


@click.command(epilog="JOB_ID: a job (12) or one array element (12_3).")
@click.argument("job_id", type=JOB)
@click.option("--priority", type=int, help="0-100, higher runs first")
@click.option("-t", "--time", "time_limit", metavar="TIME",
              help="time limit: minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED")
@click.option("-c", "--cpus", type=click.IntRange(min=1), help="CPUs")
@click.option("--mem", type=MEMORY, help="memory, e.g. 512M or 4G")
@click.option("-J", "--name", help="job name")
@click.option("-b", "--begin", type=BEGIN,
              help="start no earlier than: now+1hour, 14:30, 2026-11-24T02:30")
def update(*, job_id: str, priority: int | None, time_limit: str | None, cpus: int | None,
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


def states_query(text: str | None) -> str | None:
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
    query: dict[str, Any] = {"user": user, "state": states_query(states), "name": name,
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


@click.command(epilog="JOB_ID: a job (12) or one array element (12_3).")
@click.argument("job_id", type=JOB)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def eff(job_id: str, as_json: bool) -> None:
    """How well a job used what it asked for: CPU and memory efficiency (like seff)."""
    page = client().call("GET", f"/api/v1/jobs/{job_id}/attempts")
    job, attempts = page["job"], page["items"]
    if as_json:
        emit_json(efficiency(job, attempts))
        return
    for line in eff_lines(job, attempts):
        click.echo(line)


COMMANDS = (hold, release, requeue, update, history, eff)


# --- submit: the request body (pure) ------------------------------------------------------
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXPORT_HELP = ("environment for the job, as sbatch: ALL, NONE, NAME (its value here) or "
               "NAME=value, comma-separated. A job always starts from a clean environment "
               "plus what is named: ALL does not copy this shell's whole environment")


class OptionError(ValueError):
    """A command-line value that cannot be used; the message names the option."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitOptions:
    """What the command line said; None (or empty) where it said nothing, so the script's
    directive applies. Command-line options win over directives, as with sbatch."""

    script: str | None  # its path, "-" for standard input, None for --wrap
    cpus: int | None = None
    time: str | None = None
    mem: str | None = None
    name: str | None = None
    partition: str | None = None
    env: tuple[str, ...] = ()  # --env K=V, added on top of what --export gives
    export: str | None = None
    requeue: bool | None = None
    hold: bool | None = None
    priority: int | None = None
    nice: int | None = None
    begin: datetime | None = None
    retries: int | None = None
    retry_delay: int | None = None
    array: str | None = None
    dependency: str | None = None
    output: str | None = None
    error: str | None = None
    chdir: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Export:
    """An --export value: the mode (ALL, NONE or None), NAMEs to copy, NAME=value pairs."""

    mode: str | None = None
    names: tuple[str, ...] = ()
    values: tuple[tuple[str, str], ...] = ()


def wrap_script(command: str) -> str:
    """`--wrap CMD`: the script sbatch makes of it."""
    return f"#!/bin/sh\n{command}\n"


def read_submission(script: str | None, wrap: str | None,
                    options: Callable[[Directives], SubmitOptions], *, nothing: str
                    ) -> tuple[dict[str, Any], list[str]]:
    """The POST /jobs body (and warnings) of SCRIPT or --wrap: its directives, then the
    command line (`options`, given the directives). A bad directive exits 1, a bad option 2,
    saying `nothing` ("nothing submitted") was done."""
    text = script_text(script, wrap)
    try:
        d = parse_directives(text)
    except DirectiveError as e:
        fail(f"{e} ({nothing})")
        sys.exit(1)
    try:
        return build_submission(text, d, options(d), cwd=os.getcwd(), environ=os.environ)
    except OptionError as e:
        fail(str(e))
        sys.exit(2)


def script_text(script: str | None, wrap: str | None) -> str:
    """The script a verb was given: a file, `-` (standard input), or `--wrap 'CMD'`."""
    if (script is None) == (wrap is None):
        raise click.UsageError("give a SCRIPT (a file, or - for standard input) or "
                               "--wrap 'COMMAND', not both" if script else
                               "missing SCRIPT (a file, or - for standard input) or "
                               "--wrap 'COMMAND'")
    if wrap is not None:
        return wrap_script(wrap)
    return sys.stdin.read() if script == "-" else Path(str(script)).read_text()


def parse_export(value: str) -> Export:
    """sbatch --export: `ALL`, `NONE`, `NAME`, `NAME=value`, comma-separated (as a directive's
    --export is read)."""
    mode: str | None = None
    names: list[str] = []
    values: list[tuple[str, str]] = []
    for item in value.split(","):
        name, eq, v = item.partition("=")
        if not eq and name.upper() in ("ALL", "NONE"):
            if mode not in (None, name.upper()):
                raise OptionError(f"--export={value}: ALL and NONE contradict each other")
            mode = name.upper()
        elif not _ENV_NAME.match(name):
            if item:
                raise OptionError(f"--export={value}: {name!r} is not a variable name; "
                                  "expected ALL, NONE, NAME or NAME=value, comma separated "
                                  "(e.g. ALL,FOO=bar)")
        elif eq:
            values.append((name, v))
        elif name not in names:
            names.append(name)
    return Export(mode=mode, names=tuple(names), values=tuple(values))


def job_environment(export: Export, extra: tuple[str, ...], environ: Mapping[str, str]
                    ) -> tuple[dict[str, str], list[str]]:
    """The job's environment (beyond what the executor sets) and warnings: NAME items take
    their value from `environ`; --env K=V items come last and win."""
    env: dict[str, str] = {}
    warnings: list[str] = []
    for name in export.names:
        if name in environ:
            env[name] = environ[name]
        else:
            warnings.append(f"--export={name}: {name} is not set here, so it is not exported")
    env.update(export.values)
    for item in extra:
        k, sep, v = item.partition("=")
        if not sep or not _ENV_NAME.match(k):
            raise OptionError(f"--env {item}: expected NAME=value")
        env[k] = v
    return env, warnings


def _option(name: str, value: str, parse: Callable[[str], Any]) -> Any:
    """A command-line value through the parser its directive uses; OptionError names it."""
    try:
        return parse(value)
    except (DirectiveError, SpecError) as e:
        text = str(e)
        raise OptionError(text if text.startswith(name) else f"{name}={value}: {text}") from e


def build_submission(text: str, d: Directives, o: SubmitOptions, *, cwd: str,
                     environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The POST /jobs body and the warnings to print (each once, the script's first). `cwd`
    anchors a relative --chdir and is the job's submit_dir; `environ` gives --export NAME
    values. OptionError for a command-line value that cannot be used."""
    default_name = "wrap" if o.script is None else "stdin" if o.script == "-" \
        else posixpath.basename(o.script)
    cpus = o.cpus or d.total_cpus or 1
    body: dict[str, Any] = {"script": text, "cpus": cpus,
                            "name": o.name or d.name or default_name, "submit_dir": cwd}
    limit = _option("--time", o.time, parse_time) if o.time is not None else d.time_limit
    if limit:
        body["time_limit"] = limit
    memory = _option("--mem", o.mem, parse_memory) if o.mem is not None \
        else d.memory_for(cpus)  # --mem-per-cpu follows a command-line -c
    if memory:
        body["memory_mb"] = memory
    export = parse_export(o.export) if o.export is not None else Export(
        mode=d.export_mode, names=tuple(d.export_names), values=tuple(d.env.items()))
    env, export_warnings = job_environment(export, o.env, environ)
    if env:
        body["env"] = env
    if o.requeue if o.requeue is not None else d.requeue:
        body["requeue"] = True
    if o.hold or d.hold:
        body["hold"] = True
    if o.array is not None:
        _option("--array", o.array, parse_array)
    if o.dependency is not None:
        _option("--dependency", o.dependency, parse_dependency)
    chdir = o.chdir or d.chdir
    begin_at = o.begin or d.begin_at
    fields = {
        "partition": o.partition or d.partition,
        "priority": o.priority if o.priority is not None else d.priority,
        "nice": o.nice if o.nice is not None else d.nice,
        "begin_at": to_utc_iso(begin_at) if begin_at else None,
        "retries": o.retries, "retry_delay_s": o.retry_delay,
        "array": (o.array or "").strip() or d.array,
        "dependency": (o.dependency or "").strip() or d.dependency,
        "output": o.output or d.output, "error": o.error or d.error,
        "workdir": posixpath.normpath(posixpath.join(cwd, chdir)) if chdir else None,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    return body, list(dict.fromkeys([*d.warnings, *export_warnings]))
