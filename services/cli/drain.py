"""`scns drain WORKER --wait`: drain, then follow the worker until no job holds its CPUs.

The step before replacing an executor (an image rollout with `updateStrategy: OnDelete`, a node
upgrade; docs/operations.md): running jobs finish on their own, none is killed. A bar on a
terminal (`draining arm-node-02 ━━━━━━╸━━━ 24/32 CPUs freed  ▶ 8 in use  0:12:40`), a line
per change otherwise (a script, a CI log), then one line saying the worker is empty.
"""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape

from services.cli.client import Client, Unreachable
from services.cli.common import err

POLL_S = 1.0
UNREACHABLE_FOR_S = 120.0  # a gateway rollout meanwhile is ridden out


def _worker(c: Client, worker_id: str) -> dict[str, Any] | None:
    items: list[dict[str, Any]] = c.call("GET", "/api/v1/workers")["items"]
    return next((w for w in items if w["id"] == worker_id), None)


def wait_drained(c: Client, worker_id: str, *, timeout: float | None,
                 poll_s: float = POLL_S) -> int:
    """0 once the worker holds no CPU (no job allocated or running on it); 1 if `timeout`
    passes first, or someone resumes it meanwhile; 2 if there is no such worker."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = answered = time.monotonic()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} CPUs freed  "
                   "[blue]▶ {task.fields[busy]} in use[/]"),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
    said: int | None = None
    noted_down = False
    with progress:
        task = progress.add_task(f"draining {escape(worker_id)}", total=None, busy=0)
        most = 0
        while True:
            try:
                w = _worker(c, worker_id)
                answered = time.monotonic()
            except Unreachable:
                if time.monotonic() - answered > UNREACHABLE_FOR_S:
                    raise
                time.sleep(poll_s)
                continue
            if w is None:
                err.print(f"[red]error:[/] no worker {escape(worker_id)}")
                return 2
            if not w["drain"] and w["state"] == "ready":
                err.print(f"worker {escape(worker_id)} was resumed while draining; "
                          "not waiting any longer")
                return 1
            busy = int(w["allocated_cpus"])
            most = max(most, busy)
            progress.update(task, total=max(most, 1), completed=most - busy, busy=busy)
            if w["state"] == "down" and not noted_down and busy:
                err.print(f"worker {escape(worker_id)} is down: its jobs are the reconciler's "
                          "now (NODE_FAIL or requeued after SCNS_NODE_FAIL_GRACE_S)")
                noted_down = True
            if busy == 0:
                break
            if not err.is_terminal and busy != said:
                err.print(f"worker {escape(worker_id)}: {busy} CPUs still in use", highlight=False)
                said = busy
            if timeout is not None and time.monotonic() - started >= timeout:
                err.print(f"worker {escape(worker_id)} still has {busy} CPUs in use after "
                          f"{timeout:g}s; it stays drained", highlight=False)
                return 1
            time.sleep(poll_s)
    err.print(f"worker {escape(worker_id)} is drained: no job runs on it "
              f"({time.monotonic() - started:.0f}s); it can be replaced now, then `scns resume "
              f"{escape(worker_id)}`", highlight=False)
    return 0
