"""Where a person waits on the command line: the refreshing view of `scns queue --watch`, the
spinner of `scns logs -f` while its job has not started, and the bar of a long `scns cancel`.

Animations go to a terminal only: piped, the watch prints one view per refresh (a blank line
between them) and the spinners and bars print nothing. The pause between two polls is `pause`,
looked up at each call, so tests replace it instead of sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.text import Text

from services.cli.arrays import TERMINAL, QueueRow
from services.cli.client import ApiError, Client, Unreachable
from services.cli.directives import local_zone

UNREACHABLE = "gateway unreachable, retrying…"
# the order of the header's counts: the active states, then the finished ones (--all)
STATE_ORDER = ("RUNNING", "ALLOCATED", "PENDING", *TERMINAL)
WAITING = frozenset({"PENDING", "ALLOCATED"})  # a job that has not started yet
START_POLL_S = 1.0  # how often `logs -f` asks whether its job has started, at most


def pause(seconds: float) -> None:
    """The sleep between two polls (tests replace it)."""
    time.sleep(seconds)


def gateway_down(e: BaseException) -> bool:
    """No answer, or the gateway said "not now" (restarting, PostgreSQL away): worth asking
    again. Any other error is an answer, and ends the command."""
    return isinstance(e, Unreachable) or (isinstance(e, ApiError) and e.status in (502, 503, 504))


# --- the header of `queue --watch` (pure) ---------------------------------------------------
def row_counts(rows: Sequence[QueueRow]) -> tuple[Counter[str], Counter[str]]:
    """Jobs by state and pending jobs by reason, over queue lines (a fold counts its
    elements)."""
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for row in rows:
        state = str(row.job["state"])
        states[state] += row.count
        if state == "PENDING":
            reasons[str(row.job.get("reason") or "None")] += row.count
    return states, reasons


def counts_line(states: Mapping[str, int], reasons: Mapping[str, int], *,
                partial: Collection[str] = (),
                workers: Mapping[str, int] | None = None) -> str:
    """`3 running · 12 pending (8 Resources, 4 Held) · 2 workers`: the jobs of each state (`12+`
    for a state the listing holds more of than it read), pending ones by reason (most first),
    then the workers that are up (those draining and down in brackets); None: workers
    unknown."""
    parts: list[str] = []
    for state in sorted(states, key=lambda s: (STATE_ORDER.index(s) if s in STATE_ORDER
                                               else len(STATE_ORDER), s)):
        n = states[state]
        if not n:
            continue
        part = f"{n}{'+' if state in partial else ''} {state.lower().replace('_', ' ')}"
        if state == "PENDING" and reasons:
            why = sorted(((r, k) for r, k in reasons.items() if k), key=lambda x: (-x[1], x[0]))
            part += " (" + ", ".join(f"{k} {r}" for r, k in why) + ")"
        parts.append(part)
    if not parts:
        parts.append("no jobs")
    if workers is not None:
        up = workers.get("ready", 0) + workers.get("draining", 0)
        part = "no workers" if not up else f"{up} worker{'' if up == 1 else 's'}"
        aside = [f"{workers[s]} {s}" for s in ("draining", "down") if workers.get(s)]
        parts.append(part + (f" ({', '.join(aside)})" if aside else ""))
    return " · ".join(parts)


def worker_states(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Workers by state (ready, draining, down) from GET /workers items."""
    return dict(Counter(str(w.get("state") or "down") for w in items))


# --- the refreshing view --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class View:
    """One refresh: a header line (the time of the refresh goes before it) and the body."""

    header: str
    body: RenderableType


def run(render: Callable[[], View], *, console: Console, interval: float,
        count: int | None = None, sleep: Callable[[float], None] | None = None,
        clock: Callable[[], datetime] | None = None) -> None:
    """Show render() every `interval` seconds until Ctrl-C (or `count` refreshes): in place on
    a terminal (rich Live), else one view after another with a blank line between them.

    A gateway that does not answer (or answers 502/503/504) gives a one-line notice instead
    of ending the command (on a terminal, above the last view it gave); the next refresh that
    gets an answer shows the view again. Any other error ends the command."""
    nap = sleep or pause
    now = clock or (lambda: datetime.now(local_zone()))
    terminal = console.is_terminal
    hint = f"   every {interval:g}s · Ctrl-C quits" if terminal else ""
    last: tuple[str, View] | None = None  # when the last answer came, and its view

    def frame() -> RenderableType:
        nonlocal last
        try:
            view = render()
        except Exception as e:
            if not gateway_down(e):
                raise
            notice = Text(UNREACHABLE + (f" (last answer at {last[0]})" if last else ""),
                          style="yellow")
            if not terminal or last is None:
                return notice
            return Group(_head(*last, hint), notice, last[1].body)
        last = (f"{now():%H:%M:%S}", view)
        return Group(_head(*last, hint), view.body)

    done = 0
    with contextlib.suppress(KeyboardInterrupt):
        if terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    live.update(frame(), refresh=True)
                    done += 1
                    if count is not None and done >= count:
                        break
                    nap(interval)
        else:
            while True:
                if done:
                    console.print()
                console.print(frame())
                done += 1
                if count is not None and done >= count:
                    break
                nap(interval)


def _head(at: str, view: View, hint: str) -> Text:
    head = Text.from_markup(f"[bold]{at}[/]  {escape(view.header)}")
    if hint:
        head.append(hint, style="dim")
    return head


# --- waiting for a job to start (`logs -f`) --------------------------------------------------
def waiting_line(job_id: str, job: Mapping[str, Any]) -> str:
    """`job 12: PENDING (Resources), waiting for it to start`."""
    reason = f" ({job['reason']})" if job.get("reason") else ""
    return f"job {job_id}: {job['state']}{reason}, waiting for it to start"


def wait_to_start(c: Client, job_id: str, *, console: Console,
                  sleep: Callable[[float], None] | None = None) -> None:
    """Until the job has left PENDING and ALLOCATED: a spinner on `console` (a terminal's
    stderr) saying its state and why it waits. A gateway that stops answering is waited out
    (the spinner says so); Ctrl-C ends the wait as it ends the command."""
    nap = sleep or pause
    job = c.call("GET", f"/api/v1/jobs/{job_id}")
    if job["state"] not in WAITING:
        return
    line = waiting_line(job_id, job)
    delay = 0.2
    spinner = Spinner("dots", escape(line), style="status.spinner")
    with Live(spinner, console=console, transient=True, refresh_per_second=12.5) as live:
        while True:
            spinner.update(text=escape(line))
            live.refresh()  # drawn now, not at the spinner's next tick
            nap(delay)
            delay = min(delay * 2, START_POLL_S)
            try:
                job = c.call("GET", f"/api/v1/jobs/{job_id}")
            except Exception as e:
                if not gateway_down(e):
                    raise
                line = f"job {job_id}: {UNREACHABLE}"
                continue
            if job["state"] not in WAITING:
                return
            line = waiting_line(job_id, job)


# --- a bar over many requests (`cancel`) -----------------------------------------------------
@contextlib.contextmanager
def steps(total: int, description: str, *, console: Console, redirect_stdout: bool
          ) -> Iterator[Callable[[], None]]:
    """A transient spinner (one step) or bar (`cancelling ━━━━╸━━━ 3/10 0:00:02`) on `console`
    while the caller takes `total` steps; yields the function that counts one. Nothing unless
    `console` is a terminal. `redirect_stdout`: print stdout above the bar (when stdout is the
    same terminal) instead of across it."""
    if not console.is_terminal or total < 1:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total > 1:
        columns += [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True,
                  redirect_stdout=redirect_stdout) as progress:
        task = progress.add_task(escape(description), total=total)
        yield lambda: progress.advance(task)
