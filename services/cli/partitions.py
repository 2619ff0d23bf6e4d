"""`scns partition add|list|show|update|rm`: partitions, and the sinfo-like `scns workers`.

A partition is a named set of workers, chosen by label (its selector: every `key=value` must be
among a worker's labels; an empty selector takes every worker), with what a job may ask of it:
a maximum time limit, a default one, a maximum of CPUs per job, the users it admits, and each
user's limits within it (running CPUs, pending jobs). Its tier orders partitions for the
scheduler (higher first). Admins write partitions; everyone reads them.
The formatting here is pure: functions of the API's JSON.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from enum import Enum
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from services.cli.arrays import fmt_limit, plural
from services.cli.client import ApiError
from services.cli.common import OneLineError, client, emit_json, err, fail, out, warn
from services.cli.directives import DirectiveError, local_zone, parse_partitions, parse_time
from services.cli.schedules import api_errors

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as a job's -p items (directives.py)
WORKER_STATES = ("ready", "draining", "down")  # the order sinfo-like rows take
NONE_WORDS = ("none", "unlimited", "infinite")  # `--max-time none`: clear the value


class Clear(Enum):
    """An option's `none`: clear the value (null in the body: no limit, everyone)."""

    CLEAR = "none"


CLEAR = Clear.CLEAR


# --- option types ----------------------------------------------------------------------------
class _Clearable(click.ParamType[Any]):
    """A value, or `none` (CLEAR)."""

    def parse(self, value: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() in NONE_WORDS:
            return CLEAR
        try:
            return self.parse(value.strip())
        except (DirectiveError, ValueError) as e:
            opt = param.opts[-1] if param is not None and param.opts else "value"
            raise OneLineError(f"{opt}={value}: {e}", ctx=ctx, param=param) from None


class SlurmTime(_Clearable):
    """A Slurm time (as `submit -t`): minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; 0,
    UNLIMITED, INFINITE or none clear it."""

    name = "time"

    def parse(self, value: str) -> Any:
        try:
            seconds = parse_time(value)
        except DirectiveError as e:
            raise ValueError(str(e).partition(": ")[2]) from None
        return CLEAR if seconds is None else seconds


class Count(_Clearable):
    """A positive integer, or none."""

    name = "N|none"

    def parse(self, value: str) -> Any:
        if not value.isascii() or not value.isdigit() or int(value) < 1:
            raise ValueError("expected a positive integer, or none (no limit)")
        return int(value)


class Users(_Clearable):
    """`alice,bob`, or all (everyone; none says the same)."""

    name = "USERS|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        if isinstance(value, str) and value.strip().lower() == "all":
            return CLEAR
        return super().convert(value, param, ctx)

    def parse(self, value: str) -> Any:
        users = [u.strip() for u in value.split(",")]
        if not all(users):
            raise ValueError("expected user names, comma-separated (e.g. alice,bob), or all")
        return list(dict.fromkeys(users))


class PartitionList(click.ParamType[str]):
    """A job's -p: partition names, comma-separated (the gateway says which exist)."""

    name = "names"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        try:
            return parse_partitions(str(value))
        except DirectiveError as e:
            raise OneLineError(str(e), ctx=ctx, param=param) from None


TIME = SlurmTime()
COUNT = Count()
USERS = Users()
PARTITIONS = PartitionList()


def parse_selector(items: Sequence[str]) -> dict[str, str] | Clear:
    """`--selector K=V` items -> the selector; `none` alone: empty (every worker) -> CLEAR.
    ValueError for an item that is not K=V."""
    if len(items) == 1 and items[0].strip().lower() == "none":
        return CLEAR
    selector: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--selector {item}: expected LABEL=VALUE (e.g. pool=big), or "
                             "none (every worker)")
        selector[key.strip()] = value.strip()
    return selector


def partition_body(*, selector: dict[str, str] | Clear | None = None,
                   default_time: int | Clear | None = None, max_time: int | Clear | None = None,
                   max_cpus: int | Clear | None = None, tier: int | None = None,
                   users: list[str] | Clear | None = None, default: bool = False,
                   max_user_cpus: int | Clear | None = None,
                   max_user_pending: int | Clear | None = None) -> dict[str, Any]:
    """The POST/PATCH body of what the command line said: an option not given is left out (the
    gateway's default, or the value kept); `none` is null (no limit, everyone), and for the
    selector {} (every worker). `--default` is `"default": true` (the gateway takes the mark
    from the previous default partition); without it `default` is left out, never false."""
    values: dict[str, Any] = {
        "selector": selector, "default_time_limit": default_time, "max_time_limit": max_time,
        "max_cpus_per_job": max_cpus, "max_running_cpus_per_user": max_user_cpus,
        "max_pending_jobs_per_user": max_user_pending, "tier": tier, "allowed_users": users}
    body: dict[str, Any] = {}
    for key, value in values.items():
        if value is CLEAR:
            body[key] = {} if key == "selector" else None
        elif value is not None:
            body[key] = value
    if default:
        body["default"] = True
    return body


# --- formatting (pure) -----------------------------------------------------------------------
def fmt_timelimit(seconds: int | None) -> str:
    """A maximum time as sinfo's TIMELIMIT: 30:00, 2:00:00, 1-00:00:00, or infinite."""
    return "infinite" if seconds is None else fmt_limit(seconds)


def name_cell(p: Mapping[str, Any]) -> str:
    """A partition's name as sinfo writes it: the default one marked with `*`."""
    return f"{p['name']}*" if p.get("default") else str(p["name"])


def selector_text(selector: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (selector or {}).items())


def node_counts(p: Mapping[str, Any]) -> tuple[int, int]:
    """(ready, total) workers of a partition."""
    nodes = p.get("nodes") or {}
    total = sum(int(n or 0) for n in nodes.values()) if nodes else len(p.get("workers") or ())
    return int(nodes.get("ready") or 0), total


LIST_COLUMNS = ("PARTITION", "TIER", "TIMELIMIT", "DEFAULTTIME", "MAXCPUS", "USERLIMITS", "USERS",
                "NODES", "CPUS(A/T)", "SELECTOR")
LIST_RIGHT = ("TIER", "MAXCPUS", "NODES", "CPUS(A/T)")


def user_limits_cell(p: Mapping[str, Any]) -> str:
    """Each user's limits within a partition, short: 8cpu/100pd, 8cpu, 100pd, or -."""
    cpus, pending = p.get("max_running_cpus_per_user"), p.get("max_pending_jobs_per_user")
    parts = [f"{cpus}cpu" if cpus is not None else "", f"{pending}pd" if pending is not None
             else ""]
    return "/".join(part for part in parts if part) or "-"


def list_cells(p: Mapping[str, Any]) -> list[str]:
    """One `scns partition list` row: USERLIMITS is each user's running CPUs/pending jobs
    within it, NODES ready/total workers, CPUS(A/T) allocated/total over the ready ones."""
    ready, total = node_counts(p)
    users = p.get("allowed_users")
    return [
        name_cell(p), str(p.get("tier", 0)), fmt_timelimit(p.get("max_time_limit")),
        fmt_limit(p["default_time_limit"]) if p.get("default_time_limit") else "n/a",
        str(p["max_cpus_per_job"]) if p.get("max_cpus_per_job") is not None else "UNLIMITED",
        user_limits_cell(p), ",".join(users) if users is not None else "all",
        f"{ready}/{total}", f"{p.get('allocated_cpus', 0)}/{p.get('total_cpus', 0)}",
        selector_text(p.get("selector")) or "all",
    ]


def _table(columns: Sequence[str], right: Iterable[str] = ()) -> Table:
    t = Table(box=None, header_style="bold")
    right = set(right)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    return t


def partitions_table(items: Sequence[Mapping[str, Any]]) -> Table:
    t = _table(LIST_COLUMNS, LIST_RIGHT)
    for p in items:
        t.add_row(*(escape(c) for c in list_cells(p)))
    return t


def slurm_time(iso: str | None, zone: tzinfo | None = None) -> str:
    """An API time as scontrol writes one: local, to the second, 2026-11-24T02:30:00."""
    if not iso:
        return "Unknown"
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zone or local_zone())
    return at.strftime("%Y-%m-%dT%H:%M:%S")


def node_list(names: Iterable[str]) -> str:
    """Worker names folded as a Slurm hostlist: w1,w2,w3,w7 -> w[1-3,7]; arm-node-01 and
    arm-node-02 -> arm-node-[01-02]; names without a trailing number as they are."""
    groups: dict[tuple[str, int], list[int]] = {}
    order: list[tuple[str, int] | str] = []
    for name in sorted(set(names), key=_natural):
        m = re.match(r"^(.*?)(\d+)$", name)
        if not m:
            order.append(name)
            continue
        key = (m[1], len(m[2]))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(m[2]))
    parts: list[str] = []
    for item in order:
        if isinstance(item, str):
            parts.append(item)
            continue
        prefix, width = item
        numbers = groups[item]
        runs: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            runs.append(f"{start:0{width}d}" if start == prev
                        else f"{start:0{width}d}-{prev:0{width}d}")
            if n is not None:
                start = prev = n
        parts.append(f"{prefix}{runs[0]}" if len(numbers) == 1 else f"{prefix}[{','.join(runs)}]")
    return ",".join(parts)


def _natural(name: str) -> tuple[Any, ...]:
    m = re.match(r"^(.*?)(\d+)$", name)
    return (m[1], len(m[2]), int(m[2])) if m else (name, -1, 0)


# body key -> (scontrol's key, how its value shows): `show`, and what `update` reports
_CHANGED: dict[str, tuple[str, Callable[[Any], str]]] = {
    "selector": ("Selector", lambda v: selector_text(v) or "ALL"),
    "default_time_limit": ("DefaultTime", lambda v: fmt_limit(v) if v else "NONE"),
    "max_time_limit": ("MaxTime", fmt_limit),
    "max_cpus_per_job": ("MaxCPUsPerJob", lambda v: str(v) if v is not None else "UNLIMITED"),
    "max_running_cpus_per_user": ("MaxCPUsPerUser",
                                  lambda v: str(v) if v is not None else "UNLIMITED"),
    "max_pending_jobs_per_user": ("MaxPendingPerUser",
                                  lambda v: str(v) if v is not None else "UNLIMITED"),
    "tier": ("Tier", lambda v: str(v or 0)),
    "allowed_users": ("AllowUsers", lambda v: ",".join(v) if v is not None else "ALL"),
    "default": ("Default", lambda v: "YES" if v else "NO"),
}


def show_lines(p: Mapping[str, Any], zone: tzinfo | None = None) -> list[str]:
    """`scns partition show`: scontrol-show-like `Key=Value` lines."""
    nodes = p.get("nodes") or {}
    workers = p.get("workers") or []
    value = {key: fmt(p.get(key)) for key, (_, fmt) in _CHANGED.items()}
    return [
        f"PartitionName={p['name']}",
        f"   Default={'YES' if p.get('default') else 'NO'} Tier={value['tier']} "
        f"AllowUsers={value['allowed_users']}",
        f"   DefaultTime={value['default_time_limit']} MaxTime={value['max_time_limit']} "
        f"MaxCPUsPerJob={value['max_cpus_per_job']}",
        f"   MaxCPUsPerUser={value['max_running_cpus_per_user']} "
        f"MaxPendingPerUser={value['max_pending_jobs_per_user']}",
        f"   Selector={value['selector']}",
        f"   Nodes={node_list(workers) or '(none)'} TotalNodes={node_counts(p)[1]} "
        + " ".join(f"{s.capitalize()}={nodes.get(s, 0)}" for s in WORKER_STATES),
        f"   TotalCPUs={p.get('total_cpus', 0)} AllocatedCPUs={p.get('allocated_cpus', 0)} "
        f"FreeCPUs={p.get('free_cpus', 0)}",
        f"   Created={slurm_time(p.get('created_at'), zone)} "
        f"Updated={slurm_time(p.get('updated_at'), zone)}",
    ]


def updated_line(body: Mapping[str, Any], p: Mapping[str, Any]) -> str:
    """`Updated partition big: MaxTime=1-00:00:00 AllowUsers=ALL` (the values the gateway
    answered, for the keys that were sent)."""
    shown = [f"{label}={fmt(p.get(key))}" for key, (label, fmt) in _CHANGED.items()
             if key in body]
    return f"Updated partition {p['name']}: " + " ".join(shown)


def created_line(p: Mapping[str, Any]) -> str:
    workers = p.get("workers") or []
    sel = selector_text(p.get("selector"))
    matches = f"{plural(len(workers), 'worker')} match" + ("es" if len(workers) == 1 else "")
    return (f"Created partition {p['name']}: "
            + (f"selector {sel}, " if sel else "every worker, ")
            + matches + (f" ({node_list(workers)})" if workers else "")
            + ("; the default partition" if p.get("default") else ""))


def members(p: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> list[str]:
    """A partition's workers: those it lists (the live ones) and those of the workers page
    whose labels its selector matches (a down worker is in no partition's `workers`, though
    its `nodes.down` counts it), in the page's order."""
    listed = list(p.get("workers") or ())
    selector = p.get("selector") or {}
    found = [w["id"] for w in workers
             if w["id"] in listed or all((w.get("labels") or {}).get(k) == v
                                         for k, v in selector.items())]
    return found + [w for w in listed if w not in found]


def worker_partitions(partitions: Sequence[Mapping[str, Any]],
                      workers: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """worker id -> the partitions it is in (sinfo's names: the default one with `*`)."""
    found: dict[str, list[str]] = {}
    for p in partitions:
        for w in members(p, workers):
            found.setdefault(w, []).append(name_cell(p))
    return found


SINFO_COLUMNS = ("PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST")


def sinfo_rows(partitions: Sequence[Mapping[str, Any]], workers: Sequence[Mapping[str, Any]]
               ) -> list[list[str]]:
    """`scns workers` as sinfo: one row per partition and worker state (a worker in several
    partitions shows under each); a partition with no worker has one row, state n/a."""
    state = {w["id"]: str(w.get("state") or "unknown") for w in workers}
    rows: list[list[str]] = []
    for p in partitions:
        by_state: dict[str, list[str]] = {}
        for wid in members(p, workers):
            by_state.setdefault(state.get(wid, "unknown"), []).append(wid)
        head = [name_cell(p), "up", fmt_timelimit(p.get("max_time_limit"))]
        if not by_state:
            rows.append([*head, "0", "n/a", ""])
            continue
        rank = {s: i for i, s in enumerate(WORKER_STATES)}
        for st in sorted(by_state, key=lambda s: (rank.get(s, len(rank)), s)):
            rows.append([*head, str(len(by_state[st])), st, node_list(by_state[st])])
    return rows


def unpartitioned(partitions: Sequence[Mapping[str, Any]], workers: Sequence[Mapping[str, Any]]
                  ) -> list[str]:
    """Workers in no partition (their labels match no selector): no job can run on them."""
    inside = {w for p in partitions for w in members(p, workers)}
    return [w["id"] for w in workers if w["id"] not in inside]


def sinfo_table(partitions: Sequence[Mapping[str, Any]], workers: Sequence[Mapping[str, Any]]
                ) -> Table:
    t = _table(SINFO_COLUMNS, ("NODES",))
    for row in sinfo_rows(partitions, workers):
        t.add_row(*(escape(c) for c in row))
    return t


NODE_COLUMNS = ("WORKER", "PARTITIONS", "STATE", "CPUS(A/T)", "MEMORY(A/T MB)", "ARCH",
                "LAST HEARTBEAT")


def node_cells(w: Mapping[str, Any], partitions: Mapping[str, list[str]] | None) -> list[str]:
    """One `scns workers -N` row; PARTITIONS only when the gateway has partitions (None: an
    older one)."""
    cells = [w["id"], ",".join(partitions.get(w["id"], [])) or "-"] if partitions is not None \
        else [w["id"]]
    return [*cells, str(w["state"]), f"{w['allocated_cpus']}/{w['cpus']}",
            f"{w['allocated_memory_mb']}/{w['memory_mb']}",
            str((w.get("labels") or {}).get("arch", "")), w.get("last_heartbeat") or ""]


def nodes_table(workers: Sequence[Mapping[str, Any]],
                partitions: Sequence[Mapping[str, Any]] | None) -> Table:
    of = worker_partitions(partitions, workers) if partitions is not None else None
    t = _table([c for c in NODE_COLUMNS if of is not None or c != "PARTITIONS"])
    for w in workers:
        t.add_row(*(escape(c) for c in node_cells(w, of)))
    return t


# --- the verbs -------------------------------------------------------------------------------
def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not NAME.match(value):
        raise OneLineError(f"{value!r} is not a partition name: 1 to 64 letters, digits, '.', "
                           "'_' or '-'", ctx=ctx, param=param)
    return value


def _selector(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
              ) -> dict[str, str] | Clear | None:
    if not value:
        return None
    try:
        return parse_selector(value)
    except ValueError as e:
        raise OneLineError(str(e), ctx=ctx, param=param) from None


def _options(f: Any) -> Any:
    """The options `add` and `update` share."""
    for decorator in reversed([
        click.option("--selector", multiple=True, metavar="LABEL=VALUE", callback=_selector,
                     help="the workers whose labels include LABEL=VALUE (repeat for several; "
                          "all must match); none: every worker [every worker]"),
        click.option("--default-time", "default_time", type=TIME,
                     help="time limit of a job that gives none: minutes, HH:MM:SS, "
                          "D-HH:MM:SS; none clears it"),
        click.option("--max-time", "max_time", type=TIME,
                     help="largest time limit a job may ask (as --default-time); none: "
                          "infinite"),
        click.option("--max-cpus", "max_cpus", type=COUNT, metavar="N|none",
                     help="most CPUs one job may ask; none: no limit"),
        click.option("--max-user-cpus", "max_user_cpus", type=COUNT, metavar="N|none",
                     help="most CPUs each user's running jobs may hold in it (beyond, they "
                          "wait: QOSMaxCpuPerUserLimit); none: no limit"),
        click.option("--max-user-pending", "max_user_pending", type=COUNT, metavar="N|none",
                     help="most pending jobs naming it each user may have (a submission past "
                          "it is refused); none: no limit"),
        click.option("--tier", type=int, metavar="N",
                     help="higher tiers are scheduled first [0]"),
        click.option("--users", type=USERS, metavar="USERS|all",
                     help="the only users who may submit to it, comma-separated; all: "
                          "everyone [all]"),
        click.option("--default", "default", is_flag=True,
                     help="make it the default partition (jobs that name none go there); the "
                          "previous default stops being it"),
        click.option("--json", "as_json", is_flag=True, help="print the partition as JSON"),
    ]):
        f = decorator(f)
    return f


@click.group("partition")
def partition() -> None:
    """Partitions: named sets of workers (chosen by label) with limits on the jobs they take
    (add, list, show, update, rm; writing them needs an admin token)."""


@partition.command("add", epilog="A job names partitions with -p/--partition (or #SBATCH "
                   "--partition); without one it goes to the default partition (--default "
                   "makes this one it).")
@click.argument("name", callback=_name)
@_options
def add(name: str, *, as_json: bool, **options: Any) -> None:
    """Make partition NAME."""
    body = {"name": name, **partition_body(**options)}
    with api_errors():
        made = client().call("POST", "/api/v1/partitions", body)
    if as_json:
        emit_json(made)
        return
    click.echo(created_line(made))
    if not made.get("workers"):
        sel = selector_text(made.get("selector"))
        warn(f"no worker {'has the labels ' + sel if sel else 'is up'} yet: jobs that name "
             f"only {made['name']} wait until one joins")


@partition.command("list")
@click.option("--json", "as_json", is_flag=True, help="the partitions as JSON")
def list_(as_json: bool) -> None:
    """List partitions (like sinfo -s): `*` marks the default one."""
    with api_errors():
        page = client().call("GET", "/api/v1/partitions")
    if as_json:
        emit_json(page)
        return
    if not page["items"]:
        err.print("no partitions (`scns partition add NAME` makes one)")
        return
    out.print(partitions_table(page["items"]))


@partition.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="the partition as JSON")
def show(name: str, as_json: bool) -> None:
    """Show one partition in full (like scontrol show partition)."""
    with api_errors():
        p = client().call("GET", f"/api/v1/partitions/{name}")
    if as_json:
        emit_json(p)
        return
    for line in show_lines(p):
        click.echo(line)


@partition.command("update", epilog="Only the options given change; `none` clears a limit.")
@click.argument("name")
@_options
def update(name: str, *, as_json: bool, **options: Any) -> None:
    """Change partition NAME (--selector replaces its whole selector)."""
    body = partition_body(**options)
    if not body:
        raise click.UsageError("nothing to update: give at least one of --selector, "
                               "--default-time, --max-time, --max-cpus, --max-user-cpus, "
                               "--max-user-pending, --tier, --users, --default")
    with api_errors():
        p = client().call("PATCH", f"/api/v1/partitions/{name}", body)
    if as_json:
        emit_json(p)
        return
    click.echo(updated_line(body, p))


@partition.command("rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Delete partitions (refused while a pending or running job names one)."""
    c = client()
    failed = False
    for name in names:
        try:
            c.call("DELETE", f"/api/v1/partitions/{name}")
        except ApiError as e:
            fail(e.message)
            failed = True
            continue
        click.echo(f"partition {name} deleted")
    if failed:
        sys.exit(1)
