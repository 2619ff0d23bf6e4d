"""`scns`: the command line, built on click (parsing, help) and rich (tables, progress)."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from services.cli import jobs
from services.cli.client import ApiError
from services.cli.common import (
    BEGIN,
    STATE_STYLE,
    TERMINAL,
    client,
    emit_json,
    err,
    out,
)
from services.cli.directives import (
    DirectiveError,
    parse_directives,
    parse_memory,
    parse_time,
    to_utc_iso,
)
from shared.errors import ConductorError

# service name -> module whose `main()` runs it
SERVICES: dict[str, str] = {
    "registry": "services.registry.service",
    "scheduler": "services.scheduler.service",
    "executor": "services.executor.service",
    "gateway": "services.gateway.app",
    "reconciler": "services.reconciler.service",
    "heartbeat": "shared.heartbeat",
}
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scns-conductor", prog_name="scns")
def cli() -> None:
    """SCNS Conductor: a batch job scheduler for CPU clusters.

    Client commands talk to the gateway at $SCNS_URL (default http://127.0.0.1:8080).
    """


for _command in jobs.COMMANDS:  # hold, release, requeue, update, history, eff
    cli.add_command(_command)


# --- jobs ---------------------------------------------------------------------------------
@cli.command()
@click.argument("script", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-c", "--cpus", type=click.IntRange(min=1), help="CPUs for the job [1]")
@click.option("-t", "--time", "time_limit", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
@click.option("--mem", help="memory, e.g. 512M or 4G")
@click.option("-J", "--name", help="job name [the script's file name]")
@click.option("--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--requeue/--no-requeue", default=None, help="requeue if its worker is lost")
@click.option("-H", "--hold", is_flag=True, default=None, help="submit held")
@click.option("--priority", type=int, help="0-100, higher runs first [0]")
@click.option("-b", "--begin", type=BEGIN,
              help="start no earlier than: now+1hour, 14:30, 2026-11-24T02:30")
@click.option("--retries", type=click.IntRange(0, 10), help="run again if it fails, up to N times")
@click.option("--retry-delay", "retry_delay", type=click.IntRange(min=0), metavar="SECONDS",
              help="wait between a failure and its retry [0]")
@click.option("--wait", is_flag=True, help="wait for the job, show its output, exit with its code")
@click.option("--json", "as_json", is_flag=True, help="print the job as JSON")
def submit(*, script: str, cpus: int | None, time_limit: str | None, mem: str | None,
           name: str | None, env: tuple[str, ...], requeue: bool | None, hold: bool | None,
           priority: int | None, begin: datetime | None, retries: int | None,
           retry_delay: int | None, wait: bool, as_json: bool) -> None:
    """Submit SCRIPT (like sbatch; reads #SCNS and #SBATCH directives)."""
    text = sys.stdin.read() if script == "-" else Path(script).read_text()
    try:
        d = parse_directives(text)
        body: dict[str, Any] = {
            "script": text,
            "cpus": cpus or d.total_cpus or 1,
            "name": name or d.name or ("stdin" if script == "-" else Path(script).name),
            "submit_dir": os.getcwd(),
        }
        limit = parse_time(time_limit) if time_limit else d.time_limit
        if limit:
            body["time_limit"] = limit
        memory = parse_memory(mem) if mem else d.memory_mb
        if memory:
            body["memory_mb"] = memory
    except DirectiveError as e:
        raise click.UsageError(str(e)) from e
    for warning in d.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    environment = dict(d.env)
    for item in env:
        k, sep, v = item.partition("=")
        if not sep:
            raise click.UsageError(f"--env expects K=V, got {item!r}")
        environment[k] = v
    if environment:
        body["env"] = environment
    if requeue if requeue is not None else d.requeue:
        body["requeue"] = True
    if hold or d.hold:
        body["hold"] = True
    if d.partition:
        body["partition"] = d.partition
    begin_at = begin or d.begin_at
    scheduling = {"priority": priority if priority is not None else d.priority,
                  "begin_at": to_utc_iso(begin_at) if begin_at else None,
                  "retries": retries, "retry_delay_s": retry_delay}
    body.update({k: v for k, v in scheduling.items() if v is not None})
    job = client().submit(body)
    if as_json and not wait:
        emit_json(job)
        return
    err.print(f"Submitted batch job {job['id']}") if wait else click.echo(
        f"Submitted batch job {job['id']}")
    if wait:
        sys.exit(wait_for(job["id"], as_json=as_json))


def wait_for(job_id: int, *, as_json: bool = False) -> int:
    c = client()
    job: dict[str, Any] = {}
    with err.status(f"job {job_id}: submitted") as status:
        delay = 0.05
        while True:
            job = c.call("GET", f"/api/v1/jobs/{job_id}")
            reason = f" ({job['reason']})" if job["state"] == "PENDING" and job["reason"] else ""
            where = f" on {job['worker_id']}" if job["worker_id"] else ""
            status.update(f"job {job_id}: {job['state']}{reason}{where}")
            if job["state"] in TERMINAL:
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
    for stream, sink in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        text = c.call("GET", f"/api/v1/jobs/{job_id}/log", query={"stream": stream})
        if text:
            sink.write(text)
            sink.flush()
    if as_json:
        emit_json(job)
    else:
        detail = ""
        if job["exit_code"] is not None:
            detail = f" (exit code {job['exit_code']})"
        elif job["signal"] is not None:
            detail = f" (signal {job['signal']})"
        style = STATE_STYLE.get(job["state"], "")
        err.print(f"job {job_id} [{style}]{job['state']}[/]{detail}")
    if job["state"] == "COMPLETED":
        return 0
    if job["exit_code"]:
        return int(job["exit_code"])
    if job["signal"]:
        return 128 + int(job["signal"])
    return 1


def _jobs_table(items: list[dict[str, Any]]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("JOBID", "NAME", "USER", "STATE", "CPUS", "TIME", "NODELIST(REASON)"):
        t.add_column(col, justify="right" if col in ("JOBID", "CPUS") else "left")
    for j in items:
        t.add_row(str(j["id"]), escape(j["name"]), escape(j["user"]),
                  f"[{STATE_STYLE.get(j['state'], '')}]{j['state']}[/]", str(j["cpus"]),
                  _elapsed(j), escape(_where(j)))
    return t


def _where(job: dict[str, Any]) -> str:
    """squeue's NODELIST(REASON): why a pending job waits, else where the job ran."""
    if job["state"] == "PENDING":
        return f"({job['reason'] or 'None'})"
    return job["worker_id"] or (f"({job['reason']})" if job["reason"] else "")


def _elapsed(job: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    if not job["started_at"]:
        return "0:00"
    start = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")) \
        if job["finished_at"] else datetime.now(UTC)
    s = int((end - start).total_seconds())
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@cli.command()
@click.option("-t", "--state", "states", help="states, comma-separated (e.g. PENDING,RUNNING)")
@click.option("-u", "--user", help="only this user's jobs")
@click.option("-n", "--name", help="only jobs with this name")
@click.option("-a", "--all", "show_all", is_flag=True, help="include finished jobs")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def queue(*, states: str | None, user: str | None, name: str | None, show_all: bool, limit: int,
          as_json: bool) -> None:
    """List jobs, newest first (like squeue: active jobs unless --all or --state)."""
    if not states and not show_all:
        states = "PENDING,ALLOCATED,RUNNING"
    page = client().call("GET", "/api/v1/jobs", query={"state": states, "user": user,
                                                       "name": name, "limit": limit})
    if as_json:
        emit_json(page)
    elif not page["items"]:
        err.print("no jobs")
    else:
        out.print(_jobs_table(page["items"]))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def show(job_id: int, as_json: bool) -> None:
    """Show one job in full."""
    job = client().call("GET", f"/api/v1/jobs/{job_id}")
    if as_json:
        emit_json(job)
        return
    t = Table(box=None, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in job.items():
        if key == "script":
            continue
        t.add_row(key, "" if value is None else str(value))
    out.print(t)


@cli.command()
@click.argument("job_ids", type=int, nargs=-1, required=True)
def cancel(job_ids: tuple[int, ...]) -> None:
    """Cancel jobs (pending ones at once; running ones are signalled)."""
    c = client()
    failed = False
    for jid in job_ids:
        try:
            job = c.call("DELETE", f"/api/v1/jobs/{jid}")
            verb = "cancelled" if job["state"] == "CANCELLED" else "cancelling"
            click.echo(f"job {jid} {verb}")
        except ApiError as e:
            failed = True
            err.print(f"[red]job {jid}:[/] {e}")
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("job_id", type=int)
@click.option("-e", "--stderr", "use_stderr", is_flag=True, help="show stderr instead of stdout")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
def logs(job_id: int, use_stderr: bool, follow: bool) -> None:
    """Print a job's output."""
    stream = "stderr" if use_stderr else "stdout"
    if follow:
        for chunk in client().stream(f"/api/v1/jobs/{job_id}/log",
                                     {"stream": stream, "follow": "1"}):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return
    click.echo(client().call("GET", f"/api/v1/jobs/{job_id}/log", query={"stream": stream}),
               nl=False)


# --- cluster ------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
def workers(as_json: bool) -> None:
    """List workers (like sinfo)."""
    page = client().call("GET", "/api/v1/workers")
    if as_json:
        emit_json(page)
        return
    t = Table(box=None, header_style="bold")
    for col in ("WORKER", "STATE", "CPUS(A/T)", "MEMORY(A/T MB)", "ARCH", "LAST HEARTBEAT"):
        t.add_column(col)
    for w in page["items"]:
        t.add_row(w["id"], w["state"], f"{w['allocated_cpus']}/{w['cpus']}",
                  f"{w['allocated_memory_mb']}/{w['memory_mb']}", w["labels"].get("arch", ""),
                  w["last_heartbeat"] or "")
    out.print(t)
    res = client().call("GET", "/api/v1/resources")
    err.print(f"cluster: {res['allocated_cpus']}/{res['total_cpus']} CPUs allocated "
              f"({res['utilization']:.0%})")


@cli.command()
@click.argument("worker_id")
def drain(worker_id: str) -> None:
    """Stop placing jobs on a worker (running jobs continue; survives its restart)."""
    w = client().call("POST", f"/api/v1/workers/{worker_id}/drain")
    click.echo(f"worker {w['id']}: {w['state']}")


@cli.command()
@click.argument("worker_id")
def resume(worker_id: str) -> None:
    """Place jobs on a drained worker again."""
    w = client().call("POST", f"/api/v1/workers/{worker_id}/resume")
    click.echo(f"worker {w['id']}: {w['state']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def reconcile(as_json: bool) -> None:
    """Run a reconcile pass now and show what it repaired."""
    report = client().call("POST", "/api/v1/admin/reconcile")
    if as_json:
        emit_json(report)
        return
    repaired = {k: v for k, v in report.items() if isinstance(v, int) and v and k != "at"}
    click.echo("consistent: nothing to repair" if not repaired else
               "repaired: " + ", ".join(f"{k}={v}" for k, v in repaired.items()))
    for note in report.get("notes", []):
        click.echo(f"note: {note}")


# --- running the system -------------------------------------------------------------------
@cli.command("run")
@click.argument("service", type=click.Choice(sorted(SERVICES)))
def run_service(service: str) -> None:
    """Run one service in the foreground (configured by SCNS_* variables)."""
    entry: Callable[[], int] = importlib.import_module(SERVICES[service]).main
    sys.exit(entry())


@cli.command("migrate")
def migrate_cmd() -> None:
    """Bring the database (SCNS_DATABASE_URL) to the newest schema."""
    import asyncio

    from shared.db.migrate import migrate
    from shared.settings import Settings

    settings = Settings.from_env()
    applied = asyncio.run(migrate(settings.database_url))
    click.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="local executors (virtual workers)")
@click.option("--cpus", type=click.IntRange(min=1), help="CPUs each worker offers "
              "[what this machine's cgroup allows]")
def up(workers: int, cpus: int | None) -> None:
    """Run the whole system on this machine, on embedded Redis and PostgreSQL unless
    SCNS_REDIS_URL / SCNS_DATABASE_URL are set."""
    from services.cli.up import run_up

    sys.exit(run_up(workers, cpus))


def main() -> int:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except ApiError as e:
        err.print(f"[red]error:[/] {e}")
        return 2 if 400 <= e.status < 500 else 1
    except ConductorError as e:
        err.print(f"[red]error:[/] {e}")
        return 1
    return 0
