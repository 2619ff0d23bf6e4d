"""`scns limits` and `scns share`: per-user limits and fair share; and the pending-job explainer
`scns show` prints. The formatting here is pure: functions of the API's JSON.

Fair share: each user's decayed CPU usage, as a share of everyone's, against the share their
`shares` give them; factor = 2^-(usage share / share), so 1 for no usage, 0.5 for exactly the
user's share, towards 0 above it. The scheduler orders jobs by
score = w.tier * tier + w.fairshare * factor + w.age * min(waited / max_age, 1) + w.job * priority.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from services.cli.common import client, emit_json, err, out
from services.cli.partitions import CLEAR, COUNT, Clear, slurm_time
from services.cli.schedules import api_errors

FACTORS = ("age", "fairshare", "job", "tier")  # the priority factors, in the order shown


def num(x: Any, places: int = 3) -> str:
    """A number without noise: 0, 0.5, 0.013, 5123.4."""
    if x is None:
        return "-"
    value = float(x)
    if value.is_integer():
        return str(int(value))
    return f"{value:.{places}f}".rstrip("0").rstrip(".")


def human_duration(seconds: float) -> str:
    """`7 days`, `12 hours`, `1 day 12 hours`, `90 minutes`, `45 s`."""
    s = round(float(seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in
             ((days, "day"), (hours, "hour"), (minutes, "minute")) if n]
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


# --- limits ----------------------------------------------------------------------------------
def limits_body(*, max_running_cpus: int | Clear | None = None,
                max_pending_jobs: int | Clear | None = None, shares: int | None = None
                ) -> dict[str, Any]:
    """The PUT /users/{name}/limits body: options not given are left out (kept), `none` is
    null (unlimited)."""
    given = {"max_running_cpus": max_running_cpus, "max_pending_jobs": max_pending_jobs,
             "shares": shares}
    return {k: None if v is CLEAR else v for k, v in given.items() if v is not None}


def limits_lines(limits: Mapping[str, Any]) -> list[str]:
    """`scns limits USER`: `Key=Value` lines, each limit beside what the user holds now."""
    def limit(key: str) -> str:
        value = limits.get(key)
        return "UNLIMITED" if value is None else str(value)

    return [
        f"User={limits['user']} Shares={limits.get('shares', 1)}",
        f"   MaxRunningCPUs={limit('max_running_cpus')} "
        f"RunningCPUs={limits.get('running_cpus', 0)}",
        f"   MaxPendingJobs={limit('max_pending_jobs')} "
        f"PendingJobs={limits.get('pending_jobs', 0)}",
    ]


# --- fair share ------------------------------------------------------------------------------
SHARE_COLUMNS = ("USER", "USAGE(CPU-s)", "RUNNING CPUS", "SHARES", "SHARE (%)",
                 "USAGE SHARE (%)", "FACTOR")


def share_rows(share: Mapping[str, Any]) -> list[list[str]]:
    """The rows of `scns share`, lowest factor (the most used past their share) first."""
    items = sorted(share.get("items") or (), key=lambda u: (float(u["factor"]), u["user"]))
    return [[u["user"], f"{float(u['usage_cpu_s']):.1f}", str(u.get("running_cpus", 0)),
             str(u.get("shares", 1)), f"{float(u['share']) * 100:.1f}",
             f"{float(u['usage_share']) * 100:.1f}", f"{float(u['factor']):.3f}"]
            for u in items]


def share_table(share: Mapping[str, Any]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in SHARE_COLUMNS:
        t.add_column(col, justify="left" if col == "USER" else "right", no_wrap=True)
    for row in share_rows(share):
        t.add_row(*(escape(c) for c in row))
    return t


def share_footer(share: Mapping[str, Any], zone: tzinfo | None = None) -> list[str]:
    """What the numbers mean: the half-life and the formula, then the priority's weights."""
    lines = [f"usage half-life {human_duration(float(share.get('half_life_s') or 0))}"
             + (f" (as of {slurm_time(share['updated_at'], zone)})"
                if share.get("updated_at") else "")
             + "; factor = 2^-(usage share / share)"]
    if w := share.get("weights"):
        lines.append(
            f"priority = {num(w.get('tier'))}*tier + {num(w.get('fairshare'))}*factor + "
            f"{num(w.get('age'))}*age + {num(w.get('job'))}*job priority; age = "
            f"min(waited / {human_duration(float(w.get('max_age_s') or 0))}, 1)")
    return lines


# --- the pending-job explainer (scns show) ---------------------------------------------------
def explain_lines(explain: Mapping[str, Any], zone: tzinfo | None = None) -> list[str]:
    """Why a pending job waits, what its priority is made of, where it may run, and when it
    may start (scontrol-show-like lines)."""
    lines = ["Reasons:" if explain.get("reasons") else "Reasons: none given"]
    lines += [f"  {r['reason']}: {r['message']}" if r.get("message") else f"  {r['reason']}"
              for r in explain.get("reasons") or ()]
    priority = explain.get("priority")
    if priority:
        factors = priority.get("factors") or {}
        names = [*(f for f in FACTORS if f in factors), *(f for f in factors if f not in FACTORS)]
        lines.append(f"Priority={num(priority.get('score'))} ("
                     + ", ".join(f"{f}={num(factors[f])}" for f in names) + ")")
    else:
        lines.append("Priority=Unknown")
    if explain.get("partitions"):
        lines.append("Partitions:")
        for p in explain["partitions"]:
            lines.append(f"  {p['name']}: eligible" if p.get("eligible") else
                         f"  {p['name']}: not eligible"
                         + (f" ({p['why']})" if p.get("why") else ""))
    start = slurm_time(explain.get("estimated_start_at"), zone)
    estimate = explain.get("estimate")
    lines.append(f"StartTime={start}" + (f" ({estimate})" if estimate else ""))
    ahead = explain.get("ahead")
    lines.append(f"Ahead={ahead if ahead is not None else 'Unknown'}")
    return lines


# --- the verbs -------------------------------------------------------------------------------
@click.command("limits", epilog="With no option it shows USER's limits; with one (admins) it "
               "sets them, and shows the result. `none` lifts a limit.")
@click.argument("user")
@click.option("--max-running-cpus", "max_running_cpus", type=COUNT, metavar="N|none",
              help="most CPUs USER's running jobs may hold at once; none: no limit (more "
                   "wait, reason QOSMaxCpuPerUserLimit)")
@click.option("--max-pending-jobs", "max_pending_jobs", type=COUNT, metavar="N|none",
              help="most jobs USER may have pending (an array counts each element); none: "
                   "no limit (a submit past it is refused)")
@click.option("--shares", type=click.IntRange(min=1), metavar="N",
              help="USER's weight in fair share [1]")
@click.option("--json", "as_json", is_flag=True, help="the limits as JSON")
def limits(user: str, *, as_json: bool, **options: Any) -> None:
    """Show or set USER's limits: running CPUs, pending jobs, fair-share shares."""
    body = limits_body(**options)
    c = client()
    with api_errors():
        answer = c.call("PUT", f"/api/v1/users/{user}/limits", body) if body else None
        if not isinstance(answer, dict) or "running_cpus" not in answer:
            answer = c.call("GET", f"/api/v1/users/{user}/limits")
    if as_json:
        emit_json(answer)
        return
    for line in limits_lines(answer):
        click.echo(line)


@click.command("share")
@click.option("--json", "as_json", is_flag=True, help="the fair-share table as JSON")
def share(as_json: bool) -> None:
    """Fair share (like sshare): each user's decayed usage against their share, and the
    factor it gives their jobs' priority (lowest first)."""
    with api_errors():
        answer = client().call("GET", "/api/v1/share")
    if as_json:
        emit_json(answer)
        return
    if answer.get("items"):
        out.print(share_table(answer))
    else:
        err.print("no users yet")
    for line in share_footer(answer):  # below the table, on stderr: a pipe gets the rows
        click.echo(line, err=True)

