"""`scns`: the command line, built on click (parsing, help) and rich (tables, progress)."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.cli import jobs, watch
from services.cli.arrays import (
    QUEUE_COLUMNS,
    SHORT_STATE,
    UNSUCCESSFUL,
    QueueRow,
    array_control_line,
    array_note,
    array_of,
    cut_arrays,
    element_refs,
    is_array_answer,
    merge_rows,
    progress_of,
    queue_cells,
    queue_complete,
    queue_rows,
    submitted_line,
    wait_summary,
    would_submit,
)
from services.cli.client import MAX_PAGE, ApiError, Client, Unreachable, token_file
from services.cli.common import (
    BEGIN,
    JOB,
    STATE_STYLE,
    TERMINAL,
    client,
    emit_json,
    err,
    fail,
    out,
    warn,
)
from services.cli.limits import explain_lines, limits, share
from services.cli.partitions import PARTITIONS, nodes_table, partition, sinfo_table, unpartitioned
from services.cli.schedules import schedule
from services.cli.tail import follow_log, tail
from services.cli.tokens import token
from shared.arrays import SpecError, parse_array
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

    Client commands talk to the gateway at $SCNS_URL (default http://127.0.0.1:8080) with
    the token in $SCNS_TOKEN, else the admin token `scns up` wrote to
    $SCNS_DATA_DIR/admin.token.
    """


for _command in jobs.COMMANDS:  # hold, release, requeue, update, history, eff
    cli.add_command(_command)
cli.add_command(token)
cli.add_command(schedule)
cli.add_command(partition)
cli.add_command(limits)
cli.add_command(share)
cli.add_command(tail)


# --- jobs ---------------------------------------------------------------------------------
@cli.command(epilog="A job starts from a clean environment plus what --export and --env name: "
             "--export=ALL does not copy this shell's whole environment.")
@click.argument("script", required=False,
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-c", "--cpus", type=click.IntRange(min=1), help="CPUs for the job [1]")
@click.option("-t", "--time", "time_limit",
              help="time limit: minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED")
@click.option("--mem", help="memory, e.g. 512M or 4G")
@click.option("-J", "--name", help="job name [the script's file name]")
@click.option("-p", "--partition", type=PARTITIONS,
              help="partition(s), comma-separated: any of them [the default partition]")
@click.option("-a", "--array", metavar="INDEXES",
              help="a job array: 0-99, 1,3,5-7 or 0-99:2, with %N to run at most N at once")
@click.option("-d", "--dependency", metavar="DEP",
              help="afterok:12, afterany:12:13_4, afternotok:12, after:12 or singleton "
                   "(',' all of them, '?' any of them)")
@click.option("-o", "--output", metavar="PATTERN",
              help="stdout file on the worker: %j job id, %A array id, %a index, %x name, "
                   "%u user, %N worker")
@click.option("-e", "--error", metavar="PATTERN", help="stderr file on the worker (as -o)")
@click.option("-D", "--chdir", metavar="DIR",
              help="working directory on the worker (relative: to the current directory)")
@click.option("--export", metavar="ITEMS", help=jobs.EXPORT_HELP)
@click.option("--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--requeue/--no-requeue", default=None, help="requeue if its worker is lost")
@click.option("-H", "--hold", is_flag=True, default=None, help="submit held")
@click.option("--priority", type=int, help="0-100, higher runs first [0]")
@click.option("--nice", type=int, metavar="N",
              help="lower the job's priority by N (sbatch's --nice alone is 100; negative: "
                   "admins only)")
@click.option("-b", "--begin", type=BEGIN,
              help="start no earlier than: now+1hour, 14:30, 2026-11-24T02:30")
@click.option("--retries", type=click.IntRange(0, 10), help="run again if it fails, up to N times")
@click.option("--retry-delay", "retry_delay", type=click.IntRange(min=0), metavar="SECONDS",
              help="wait between a failure and its retry [0]")
@click.option("--wrap", metavar="COMMAND", help="run COMMAND (in sh) instead of a script")
@click.option("--test-only", "test_only", is_flag=True,
              help="check the job and say what would be submitted; submit nothing")
@click.option("--wait", is_flag=True, help="wait for the job (or every element of an array); "
              "exit 0 only if it completed")
@click.option("--json", "as_json", is_flag=True, help="print the job as JSON")
def submit(*, script: str | None, wrap: str | None, test_only: bool, wait: bool,
           as_json: bool, time_limit: str | None, **options: Any) -> None:
    """Submit SCRIPT (like sbatch; reads #SCNS and #SBATCH directives; - reads the script
    from standard input)."""
    body, warnings = jobs.read_submission(
        script, wrap, lambda _: jobs.SubmitOptions(script=script, time=time_limit, **options),
        nothing="nothing submitted")
    for warning in warnings:
        warn(warning)
    c = client()
    try:
        answer = c.submit(body, test_only=test_only)
    except ApiError as e:
        fail(f"{e.message} (nothing submitted)" if 400 <= e.status < 500 else str(e))
        sys.exit(1)
    if test_only:
        sys.exit(_tested(c, answer, body, as_json=as_json))
    if as_json and not wait:
        emit_json(answer)
        return
    line = submitted_line(answer)
    err.print(line, highlight=False) if wait else click.echo(line)
    if wait:
        if array_of(answer):
            sys.exit(wait_array(answer, as_json=as_json))
        sys.exit(wait_for(answer["id"], as_json=as_json))


def _tested(c: Client, answer: dict[str, Any], body: dict[str, Any], *, as_json: bool) -> int:
    if not answer.get("test_only"):  # a gateway that does not know test_only made the job
        ref = answer.get("id")
        with contextlib.suppress(ApiError):
            c.call("DELETE", f"/api/v1/jobs/{ref}")
        fail(f"the gateway does not support --test-only: it made job {ref}, which was "
             "cancelled")
        return 1
    if as_json:
        emit_json(answer)
    else:
        click.echo(would_submit(answer["job"], answer.get("array_count"), body))
    return 0


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


ARRAY_POLL_S = 0.5
UNREACHABLE_FOR_S = 120.0  # how long --wait rides out a gateway that does not answer


def wait_array(first: dict[str, Any], *, as_json: bool = False) -> int:
    """Follow an array until every element has ended: a progress bar on a terminal (done,
    failed, running, elapsed, eta), then one summary line (JSON with --json); 0 only if every
    element COMPLETED."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    c = client()
    array_id = int(first["array_job_id"] or first["id"])
    summary = first["array"]
    started = time.monotonic()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[green]✓ {task.fields[ok]}[/]  [red]✗ {task.fields[bad]}[/]  "
                   "[blue]▶ {task.fields[running]}[/]"),
        TimeElapsedColumn(), TextColumn("• eta"), TimeRemainingColumn(),
        console=err, disable=not err.is_terminal)
    answered = time.monotonic()
    with progress:
        p = progress_of(summary)
        task = progress.add_task(escape(str(first.get("name") or array_id)), total=p.total,
                                 ok=0, bad=0, running=0)
        while True:
            p = progress_of(summary)
            progress.update(task, total=p.total, completed=p.done, ok=p.completed,
                            bad=p.failed, running=p.running)
            if p.finished:
                break
            time.sleep(ARRAY_POLL_S)
            try:
                summary = c.call("GET", f"/api/v1/jobs/{array_id}")["array"]
                answered = time.monotonic()
            except Unreachable:
                if time.monotonic() - answered > UNREACHABLE_FOR_S:
                    raise
    failed: list[dict[str, Any]] = []
    if p.failed:
        failed = c.call("GET", "/api/v1/jobs", query={
            "array_job_id": array_id, "state": ",".join(UNSUCCESSFUL),
            "limit": min(MAX_PAGE, p.failed)})["items"]
    refs = element_refs(failed)
    states = dict(summary.get("states") or {})
    if as_json:
        emit_json({"array_job_id": array_id, "count": p.total, "states": states,
                   "completed": p.completed, "failed": p.failed, "failed_elements": refs,
                   "elapsed_s": round(time.monotonic() - started, 3)})
    else:
        err.print(wait_summary(array_id, states, refs), highlight=False)
    return 0 if p.completed == p.total else 1


def _queue_table(rows: list[QueueRow], *, long: bool) -> Table:
    t = Table(box=None, header_style="bold")
    for col in QUEUE_COLUMNS:
        name = "STATE" if col == "ST" and long else col
        t.add_column(name, justify="right" if col in ("TIME", "CPUS") else "left",
                     no_wrap=True)
    now = datetime.now(UTC)
    for row in rows:
        cells = [escape(cell) for cell in queue_cells(row, now, long=long)]
        cells[4] = f"[{STATE_STYLE.get(row.job['state'], '')}]{cells[4]}[/]"
        t.add_row(*cells)
    return t


MAX_QUEUE_SCAN = 10_000  # jobs listed at most (50 pages) to fold pending array elements
MAX_DONE_SCAN = 5_000  # an array's finished elements listed at most to find its pending ones


class _Summaries:
    """Array summaries (GET /jobs/{array id}), each fetched once per command."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.known: dict[int, dict[str, Any]] = {}

    def __call__(self, array_id: int) -> dict[str, Any]:
        if array_id not in self.known:
            self.known[array_id] = self.c.call("GET", f"/api/v1/jobs/{array_id}") \
                .get("array") or {}
        return self.known[array_id]


def _pending_indexes(c: Client, summary: _Summaries, arrays: list[int]
                     ) -> dict[int, tuple[int, ...]]:
    """What the folds the listing cut short stand for: the pending indexes of those arrays
    whose summary says every element but a few is pending (a held array, a throttled one),
    from its spec less the few that are not."""
    found: dict[int, tuple[int, ...]] = {}
    for array_id in arrays[:20]:
        s = summary(array_id)
        count = int(s.get("count") or 0)
        others = count - int((s.get("states") or {}).get("PENDING") or 0)
        if not count or others > MAX_DONE_SCAN:
            continue
        try:
            tasks = parse_array(s["spec"], max_size=count).tasks
        except SpecError:
            continue
        gone: set[int] = set()
        if others:
            query = {"array_job_id": array_id,
                     "state": ",".join(s for s in SHORT_STATE if s != "PENDING")}
            for page, _ in c.pages("/api/v1/jobs", query):
                gone.update(int(j["array_task_id"]) for j in page)
        found[array_id] = tuple(t for t in tasks if t not in gone)
    return found


@cli.command()
@click.option("-t", "--state", "states", help="states, comma-separated (e.g. PENDING,RUNNING)")
@click.option("-u", "--user", help="only this user's jobs")
@click.option("-n", "--name", help="only jobs with this name")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="include finished jobs (states in full, as with --long)")
@click.option("-r", "--array", "unfold", is_flag=True,
              help="one line per array element (pending elements are folded otherwise)")
@click.option("-l", "--long", "long", is_flag=True, help="states in full (ST: PD, R, CD, …)")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="lines at most (with --json: jobs)")
@click.option("--json", "as_json", is_flag=True, help="the jobs as JSON, unfolded")
@click.option("-w", "--watch", "watching", is_flag=True,
              help="show the list again every --interval seconds, until Ctrl-C (with a line "
                   "of counts: jobs by state, pending ones by reason, workers)")
@click.option("--interval", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="seconds between two refreshes of --watch [2]")
@click.option("--count", "refreshes", type=click.IntRange(min=1), hidden=True,
              help="stop --watch after N refreshes (tests)")
def queue(*, states: str | None, user: str | None, name: str | None, show_all: bool,
          unfold: bool, long: bool, limit: int, as_json: bool, watching: bool,
          interval: float | None, refreshes: int | None) -> None:
    """List jobs, newest first (like squeue: active jobs unless --all or --state). Pending
    elements of an array fold into one line, e.g. 4012_[37-999%8] (at most 8 at once)."""
    if watching and as_json:
        raise click.UsageError("--watch shows a table; it does not combine with --json (for "
                               "JSON, run `scns queue --json` in a loop)")
    if not watching and (interval is not None or refreshes is not None):
        raise click.UsageError("--interval only applies with --watch (-w)")
    if not states and not show_all:
        states = "PENDING,ALLOCATED,RUNNING"
    query = {"state": jobs.states_query(states), "user": user, "name": name}
    c = client()
    if as_json:
        emit_json(c.collect("/api/v1/jobs", query, limit))
        return
    wide = long or show_all
    if watching:
        watch.run(lambda: _queue_view(c, query, limit, unfold=unfold, long=wide),
                  console=out, interval=interval or QUEUE_WATCH_S, count=refreshes)
        return
    listing = _list_queue(c, query, limit, unfold=unfold)
    if not listing.rows:
        err.print("no jobs")
        return
    out.print(_queue_table(listing.rows[:limit], long=wide))
    if note := listing.note(limit):
        err.print(note)


QUEUE_WATCH_S = 2.0  # queue --watch: seconds between refreshes unless --interval


class _Listing:
    """The lines of `scns queue` (all that were read, newest first; `limit` are shown) and
    the states the gateway holds more jobs of than were read."""

    def __init__(self, rows: list[QueueRow], partial: set[str], *, more: bool) -> None:
        self.rows = rows
        self.partial = partial
        self.more = more  # the gateway holds jobs that were not read

    def note(self, limit: int) -> str | None:
        """What the listing left out, if anything (for stderr, below the table)."""
        rows, cut = self.rows, self.more
        if len(rows) > limit or (cut and len(rows) == limit):
            return f"(first {limit} lines; --limit shows more)"
        if cut:
            return ("(the newest jobs only; -u, -n or -t narrow the list"
                    + (", and `scns queue --array` lists every element)"
                       if not all(r.complete for r in rows) else ")"))
        return None


def _list_queue(c: Client, query: dict[str, Any], limit: int, *, unfold: bool) -> _Listing:
    wanted = (query["state"] or ",".join(SHORT_STATE)).split(",")
    # Pending jobs apart from the rest: a huge array's pending elements fold into one line and
    # must not push running jobs out of the listing.
    apart = not unfold and "PENDING" in wanted and len(wanted) > 1
    others: list[QueueRow] = []
    more = False
    partial: set[str] = set()  # states with more jobs than were read: their counts are `N+`
    if apart:
        rest = [s for s in wanted if s != "PENDING"]
        others, more = _listed(c, {**query, "state": ",".join(rest)}, limit)
        partial.update(rest if more else ())
        query = {**query, "state": "PENDING"}
    pending, pending_more = _listed(c, query, limit, unfold=unfold)
    if pending_more:
        partial.update(["PENDING"] if apart else wanted)
    return _Listing(merge_rows(others, pending), partial, more=more or pending_more)


def _queue_view(c: Client, query: dict[str, Any], limit: int, *, unfold: bool, long: bool
                ) -> watch.View:
    """One refresh of `queue --watch`: the counts line, the table `scns queue` prints and its
    note."""
    listing = _list_queue(c, query, limit, unfold=unfold)
    try:
        workers: dict[str, int] | None = watch.worker_states(
            c.call("GET", "/api/v1/workers")["items"])
    except ApiError as e:
        if watch.gateway_down(e):
            raise
        workers = None  # not allowed to see them: the line goes without
    states, reasons = watch.row_counts(listing.rows)
    header = watch.counts_line(states, reasons, partial=listing.partial, workers=workers)
    parts: list[RenderableType] = [
        _queue_table(listing.rows[:limit], long=long) if listing.rows
        else Text("no jobs", style="dim")]
    if note := listing.note(limit):
        parts.append(Text(note, style="dim"))
    return watch.View(header, Group(*parts))


def _listed(c: Client, query: dict[str, Any], limit: int, *, unfold: bool = False
            ) -> tuple[list[QueueRow], bool]:
    """The lines of one listing, folded, and whether it holds more than was listed: pages
    until `limit` lines will not change, or MAX_QUEUE_SCAN jobs."""
    items: list[dict[str, Any]] = []
    rows: list[QueueRow] = []
    cursor: str | None = None
    summary = _Summaries(c)
    for page, cursor in c.pages("/api/v1/jobs", query):
        items += page
        rows = queue_rows(items, unfold=unfold,
                          listed_down_to=int(cursor) if cursor else None)
        if queue_complete(rows, limit) or len(items) >= MAX_QUEUE_SCAN:
            break
        if any(int(summary(a).get("count") or 0) > MAX_QUEUE_SCAN
               for a in cut_arrays(rows[:limit])):
            break  # an array too big to list: its summary stands for it (below)
    if cut := cut_arrays(rows[:limit]):
        rows = queue_rows(items, unfold=unfold, listed_down_to=int(cursor) if cursor else None,
                          pending_indexes=_pending_indexes(c, summary, cut))
    return rows, cursor is not None


def _show_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "array" and isinstance(value, dict):
        spec = value.get("spec") or ""
        states = ", ".join(f"{n} {s}" for s, n in (value.get("states") or {}).items() if n)
        return (f"{spec} ({array_note(value.get('count'), value.get('throttle'))})"
                + (f": {states}" if states else ""))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@cli.command(epilog="JOB_ID: a job (12), an array (12: its first element and every "
             "element's state) or one element (12_3).")
@click.argument("job_id", type=JOB)
@click.option("--json", "as_json", is_flag=True)
def show(job_id: str, as_json: bool) -> None:
    """Show one job in full; a pending one with why it waits, its priority, the partitions it
    may run in and an estimated start."""
    c = client()
    job = c.call("GET", f"/api/v1/jobs/{job_id}")
    explain = _explain(c, job_id) if job.get("state") == "PENDING" else None
    if as_json:
        emit_json({**job, "explain": explain} if explain is not None else job)
        return
    t = Table(box=None, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in job.items():
        if key == "script":
            continue
        t.add_row(key, escape(_show_value(key, value)))
    out.print(t)
    if explain is not None:
        for line in explain_lines(explain):
            click.echo(line)


def _explain(c: Client, job_id: str) -> dict[str, Any] | None:
    """GET /jobs/{id}/explain; None from a gateway that has no explainer (404)."""
    try:
        answer: dict[str, Any] = c.call("GET", f"/api/v1/jobs/{job_id}/explain")
    except ApiError as e:
        if e.status == 404:
            return None
        warn(f"cannot say why job {job_id} waits: {e.message}")
        return None
    return answer


@cli.command(epilog=jobs.REFS)
@click.argument("job_ids", type=JOB, nargs=-1, required=True)
def cancel(job_ids: tuple[str, ...]) -> None:
    """Cancel jobs (pending ones at once; running ones are signalled). An array's id cancels
    every element."""
    # jobs.control_each's loop, with a spinner (one job) or a bar (several) on a terminal's
    # stderr while the requests go out: an array's cancel can take a while
    c = client()
    failed = False
    what = f"cancelling {job_ids[0]}" if len(job_ids) == 1 else "cancelling"
    with watch.steps(len(job_ids), what, console=err, redirect_stdout=out.is_terminal) as step:
        for ref in job_ids:
            try:
                answer = c.call("DELETE", f"/api/v1/jobs/{ref}")
            except ApiError as e:
                failed = True
                fail(e.message)
                continue
            finally:
                step()
            click.echo(array_control_line("cancel", answer) if is_array_answer(answer) else
                       f"job {ref} "
                       f"{'cancelled' if answer['state'] == 'CANCELLED' else 'cancelling'}")
    if failed:
        sys.exit(1)


def write_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@cli.command(epilog="JOB_ID: a job (12) or one array element (12_3).")
@click.argument("job_id", type=JOB)
@click.option("-e", "--stderr", "use_stderr", is_flag=True, help="show stderr instead of stdout")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
def logs(job_id: str, use_stderr: bool, follow: bool) -> None:
    """Print a job's output (with -f, a pending job's state and reason show on a terminal's
    stderr until it starts)."""
    stream = "stderr" if use_stderr else "stdout"
    if follow:
        c = client()
        if err.is_terminal:
            watch.wait_to_start(c, job_id, console=err)
        follow_log(c, job_id, stream, write_out)
        return
    click.echo(client().call("GET", f"/api/v1/jobs/{job_id}/log", query={"stream": stream}),
               nl=False)


# --- cluster ------------------------------------------------------------------------------
@cli.command()
@click.option("-N", "--node", "per_node", is_flag=True,
              help="one line per worker (with the partitions it is in), as sinfo -N")
@click.option("--json", "as_json", is_flag=True, help="the workers as JSON")
def workers(per_node: bool, as_json: bool) -> None:
    """List workers (like sinfo): one line per partition and worker state; -N: per worker."""
    c = client()
    page = c.call("GET", "/api/v1/workers")
    if as_json:
        emit_json(page)
        return
    try:
        partitions: list[dict[str, Any]] | None = c.call("GET", "/api/v1/partitions")["items"]
    except ApiError as e:
        if e.status != 404:
            raise
        partitions = None  # a gateway without partitions: the per-worker table
    if per_node or partitions is None:
        out.print(nodes_table(page["items"], partitions))
    else:
        out.print(sinfo_table(partitions, page["items"]))
        if lost := unpartitioned(partitions, page["items"]):
            err.print(f"in no partition (no job runs there): {escape(', '.join(lost))}")
    res = c.call("GET", "/api/v1/resources")
    err.print(f"cluster: {res['allocated_cpus']}/{res['total_cpus']} CPUs allocated "
              f"({res['utilization']:.0%})")


@cli.command()
@click.argument("worker_id")
@click.option("--wait", is_flag=True, help="then wait, with progress, until no job runs on "
              "the worker (the step before replacing it)")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="with --wait: give up after this many seconds (exit status 1)")
def drain(worker_id: str, wait: bool, timeout: float | None) -> None:
    """Stop placing jobs on a worker (running jobs continue; survives its restart)."""
    from services.cli.drain import wait_drained

    c = client()
    w = c.call("POST", f"/api/v1/workers/{worker_id}/drain")
    click.echo(f"worker {w['id']}: {w['state']}")
    if wait:
        sys.exit(wait_drained(c, worker_id, timeout=timeout))


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
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="wait up to this many seconds for PostgreSQL to answer")
@click.option("--grant-to", "grant_to", envvar="SCNS_APP_ROLE", metavar="ROLE",
              help="then grant this role (the services' own) the runtime privileges on every "
              "table and sequence: rows only, no schema changes [SCNS_APP_ROLE]")
def migrate_cmd(wait_s: float, grant_to: str | None) -> None:
    """Bring the database to the newest schema, as SCNS_MIGRATE_DATABASE_URL (a role that may
    change the schema; else SCNS_DATABASE_URL). Each also reads a file: *_FILE."""
    import asyncio

    from services.cli.admin import migrate_database

    sys.exit(asyncio.run(migrate_database(wait_s=wait_s, grant_to=grant_to)))


@cli.command("check")
def check_cmd() -> None:
    """Run the services' start-up checks of Redis and PostgreSQL (SCNS_REDIS_URL,
    SCNS_DATABASE_URL) and the schema version, and say what is wrong."""
    import asyncio

    from services.cli.admin import check_datastores

    sys.exit(asyncio.run(check_datastores()))


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
        err.print(f"[red]error:[/] {escape(str(e))}")
        if e.status == 401:
            err.print(f"hint: set SCNS_TOKEN to your token (`scns up` writes an admin token to "
                      f"{escape(str(token_file(os.environ)))})")
        return 2 if 400 <= e.status < 500 else 1
    except ConductorError as e:
        err.print(f"[red]error:[/] {e}")
        return 1
    return 0
