"""Job arrays on the command line: squeue's folding of pending elements into one line, the
summary lines of `submit`, `submit --wait` and array-wide controls. Pure: no I/O, and the
current time is an argument.

An array's elements are jobs of their own (own id, state, attempts) that share the array's id
(`array_job_id`, the id the submit returned: its first element's) and have an index
(`array_task_id`). `12_3` names one element; `12` names all of them where an array-wide
answer makes sense (cancel, hold, release).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.cli.accounting import elapsed_s, job_label
from services.cli.directives import PARTITION
from shared.arrays import fold_indexes

SHORT_STATE = {"PENDING": "PD", "ALLOCATED": "CF", "RUNNING": "R", "COMPLETED": "CD",
               "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO", "NODE_FAIL": "NF",
               "OUT_OF_MEMORY": "OOM"}
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
UNSUCCESSFUL = tuple(s for s in TERMINAL if s != "COMPLETED")
SHOWN_FAILURES = 5  # element refs named in the `submit --wait` summary before "…"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


# --- submit -------------------------------------------------------------------------------
def array_note(count: int | None, throttle: int | None) -> str:
    """`array of 1000, at most 8 at once` (empty for a single job)."""
    if count is None:
        return ""
    return f"array of {count}" + (f", at most {throttle} at once" if throttle else "")


def array_of(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `array` summary the API adds to an array's first element (None for a plain job)."""
    summary = job.get("array")
    return summary if isinstance(summary, Mapping) else None


def submitted_line(job: Mapping[str, Any]) -> str:
    """sbatch's answer: `Submitted batch job 4012 (array of 1000, at most 8 at once)`."""
    summary = array_of(job)
    note = array_note(summary.get("count"), summary.get("throttle")) if summary else ""
    return f"Submitted batch job {job['id']}" + (f" ({note})" if note else "")


def fmt_limit(seconds: int | None) -> str:
    """A time limit as sbatch writes it: 30:00, 2:00:00, 1-00:00:00."""
    if seconds is None:
        return "UNLIMITED"
    days, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if days:
        return f"{days}-{h:02d}:{m:02d}:{s:02d}"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def would_submit(job: Mapping[str, Any], array_count: int | None,
                 body: Mapping[str, Any]) -> str:
    """What `submit --test-only` reports: the job as the gateway would make it (falling back on
    what was sent), in one line."""
    def pick(key: str, body_key: str | None = None) -> Any:
        value = job.get(key)
        return body.get(body_key or key) if value is None else value

    throttle = pick("array_throttle")
    spec = pick("array")  # the spec as sent (test_only's job shows it as a string)
    if throttle is None and isinstance(spec, str) and "%" in spec:
        tail = spec.rpartition("%")[2]
        throttle = int(tail) if tail.isdigit() else None
    parts = [f"job {pick('name')!r}"]
    if array_count is not None:
        parts.append(array_note(array_count, throttle))
    parts.append(plural(int(pick("cpus") or 1), "CPU"))
    if memory := pick("memory_mb"):
        parts.append(f"{memory}M memory")
    time_limit = pick("time_limit")
    parts.append(f"time limit {fmt_limit(time_limit)}" if time_limit else "no time limit")
    for key, label in (("partition", "partition"), ("priority", "priority"), ("nice", "nice"),
                       ("dependency", "dependency"), ("begin_at", "begins"),
                       ("workdir", "in"), ("output", "stdout to"), ("error", "stderr to")):
        value = pick(key)
        if value not in (None, "", 0):
            parts.append(f"{label} {value}")
    if job.get("hold") or job.get("reason") == "Held" or body.get("hold"):
        parts.append("held")
    return "would submit: " + ", ".join(parts) + "; nothing submitted"


# --- submit --wait of an array ------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayProgress:
    total: int
    done: int  # in a terminal state
    completed: int
    failed: int  # terminal but not COMPLETED
    running: int  # ALLOCATED or RUNNING
    pending: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def progress_of(summary: Mapping[str, Any]) -> ArrayProgress:
    """Counts from an array summary's `states` ({"PENDING": n, ...})."""
    states: Mapping[str, int] = summary.get("states") or {}
    done = sum(n for s, n in states.items() if s in TERMINAL)
    completed = states.get("COMPLETED", 0)
    return ArrayProgress(total=int(summary.get("count") or sum(states.values())), done=done,
                         completed=completed, failed=done - completed,
                         running=states.get("RUNNING", 0) + states.get("ALLOCATED", 0),
                         pending=states.get("PENDING", 0))


def wait_summary(array_id: int, states: Mapping[str, int], failed_refs: Sequence[str], *,
                 shown: int = SHOWN_FAILURES) -> str:
    """`job 4013: 995 COMPLETED, 5 FAILED (4013_17, 4013_233, …)`: the elements' final states
    (COMPLETED first), then the first few elements that did not complete."""
    order = [s for s in TERMINAL if states.get(s)] + sorted(
        s for s in states if s not in TERMINAL and states[s])
    counts = ", ".join(f"{states[s]} {s}" for s in order) or "no elements"
    line = f"job {array_id}: {counts}"
    bad = sum(states.get(s, 0) for s in UNSUCCESSFUL)
    if failed_refs:
        refs = list(failed_refs[:shown])
        if bad > len(refs):
            refs.append("…")
        line += f" ({', '.join(refs)})"
    return line


def element_refs(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """`12_3` labels of elements, in index order."""
    ordered = sorted(items, key=lambda j: (j.get("array_task_id") is None,
                                           j.get("array_task_id") or 0, j["id"]))
    return [job_label(j) for j in ordered]


# --- cancel, hold, release ----------------------------------------------------------------
_DONE = {"cancel": "cancelled", "hold": "held", "release": "released", "requeue": "requeued"}
_NOTHING = {"cancel": "nothing to cancel: every element has finished",
            "hold": "no pending element to hold",
            "release": "no held element to release"}


def is_array_answer(answer: Mapping[str, Any]) -> bool:
    """An array-wide answer: {"array_job_id", "count", "stopping"} instead of a job."""
    return "count" in answer and "array_job_id" in answer and "state" not in answer


def array_control_line(verb: str, answer: Mapping[str, Any]) -> str:
    """`array 12: 98 elements cancelled, 2 stopping`."""
    count = int(answer.get("count") or 0)
    stopping = int(answer.get("stopping") or 0)
    head = f"array {answer['array_job_id']}: "
    if not count and not stopping:
        return head + _NOTHING.get(verb, f"no element {_DONE.get(verb, verb)}")
    if not count:
        return head + plural(stopping, "element") + " stopping"
    line = head + plural(count, "element") + f" {_DONE.get(verb, verb)}"
    if stopping:
        line += f", {stopping} stopping"
    return line


# --- queue (squeue) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRow:
    """One line of `scns queue`: a job, or the pending elements of an array folded together."""

    label: str  # 4012, 4012_36, 4012_[37-999%8]
    job: Mapping[str, Any]  # the job the other columns come from (a fold's first element)
    count: int = 1  # jobs on this line
    complete: bool = True  # False: a fold whose lower indexes were not listed (`…`)
    newest: int = 0  # the largest job id on the line: where it goes in a newest-first list


def _fold_key(job: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Pending elements that look alike on a line fold together (as Slurm keeps the rest of an
    array in one record until an element is changed on its own)."""
    if job["state"] != "PENDING" or job.get("array_task_id") is None \
            or job.get("array_job_id") is None:
        return None
    return (job["array_job_id"], job.get("reason"), job.get("cpus"), job.get("name"),
            job.get("user"), job.get("partition"), job.get("array_throttle"))


def queue_rows(items: Sequence[Mapping[str, Any]], *, unfold: bool = False,
               listed_down_to: int | None = None,
               pending_indexes: Mapping[int, Sequence[int]] | None = None) -> list[QueueRow]:
    """The lines of `scns queue` for jobs listed newest first.

    Pending elements of one array fold into `ID_[indexes%N]` at the place of the first of them;
    other elements are `ID_INDEX` lines; `unfold` (queue --array) gives every element its line.
    `listed_down_to` is where the listing stopped (its next cursor: it holds only jobs with a
    larger id), None when it is complete. An array's elements all have ids at or above the
    array's id, so a fold of array A is complete once the listing has gone down to A; an
    incomplete fold is marked `…` where the indexes that were not listed would be, unless
    `pending_indexes` has all of A's pending indexes (from its summary) and A has that one
    fold."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    order: list[tuple[Any, ...] | Mapping[str, Any]] = []
    for job in items:
        key = None if unfold else _fold_key(job)
        if key is None:
            order.append(job)
        elif key in groups:
            groups[key].append(job)
        else:
            groups[key] = [job]
            order.append(key)
    folds_of = Counter(int(key[0]) for key in groups)
    rows: list[QueueRow] = []
    for entry in order:
        if not isinstance(entry, tuple):
            rows.append(QueueRow(label=job_label(entry), job=entry, newest=int(entry["id"])))
            continue
        members = groups[entry]
        array_id = int(entry[0])
        tasks = [int(j["array_task_id"]) for j in members]
        complete = listed_down_to is None or listed_down_to <= array_id
        if not complete and pending_indexes and array_id in pending_indexes \
                and folds_of[array_id] == 1:
            tasks, complete = list(pending_indexes[array_id]), True
        throttle = members[0].get("array_throttle")
        if len(tasks) == 1 and complete:
            rows.append(QueueRow(label=job_label(members[0]), job=members[0],
                                 newest=int(members[0]["id"])))
            continue
        first = min(members, key=lambda j: int(j["array_task_id"]))
        indexes = fold_indexes(tasks)
        label = (f"{array_id}_[{'' if complete else '…,'}{indexes}"
                 f"{f'%{throttle}' if throttle else ''}]")
        rows.append(QueueRow(label=label, job=first, count=len(tasks), complete=complete,
                             newest=max(int(j["id"]) for j in members)))
    return rows


def merge_rows(*listings: Sequence[QueueRow]) -> list[QueueRow]:
    """Lines from separate listings (pending jobs, the others) in one newest-first list."""
    return sorted((r for rows in listings for r in rows), key=lambda r: -r.newest)


def cut_arrays(rows: Sequence[QueueRow]) -> list[int]:
    """The arrays whose fold the listing cut (`…`)."""
    return sorted({int(r.job["array_job_id"]) for r in rows if not r.complete})


def queue_complete(rows: Sequence[QueueRow], limit: int) -> bool:
    """Enough has been listed to print `limit` lines that will not change with more pages."""
    return len(rows) >= limit and all(r.complete for r in rows[:limit])


def squeue_time(seconds: float | None) -> str:
    """squeue's TIME: 0:00, 0:41, 2:13:07, 1-02:13:07."""
    s = max(0, int(seconds or 0))
    days, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if days:
        return f"{days}-{h:02d}:{m:02d}:{sec:02d}"
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def where(job: Mapping[str, Any]) -> str:
    """squeue's NODELIST(REASON): why a pending job waits, else where it runs or ran."""
    if job["state"] == "PENDING":
        return f"({job.get('reason') or 'None'})"
    return job.get("worker_id") or (f"({job['reason']})" if job.get("reason") else "")


QUEUE_COLUMNS = ("JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "CPUS",
                 "NODELIST(REASON)")


def queue_cells(row: QueueRow, now: datetime, *, long: bool = False) -> list[str]:
    """The cells of one line under QUEUE_COLUMNS (ST in full, as squeue -l, when `long`)."""
    job = row.job
    state = str(job["state"])
    return [row.label, job.get("partition") or PARTITION, str(job.get("name") or ""),
            str(job.get("user") or ""), state if long else SHORT_STATE.get(state, state),
            squeue_time(elapsed_s(job.get("started_at"), job.get("finished_at"), now)),
            str(job.get("cpus", "")), where(job)]
