"""Accounting arithmetic and formatting for `scns history` (sacct) and `scns eff` (seff). Pure:
no I/O, and the current time is an argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_SIZE_UNITS = ("K", "M", "G", "T", "P")


def fmt_duration(seconds: float | None) -> str:
    """H:MM:SS under a day, D-HH:MM:SS from a day on (as sacct); empty when unknown."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    days, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if days:
        return f"{days}-{h:02d}:{m:02d}:{sec:02d}"
    return f"{h}:{m:02d}:{sec:02d}"


def _scaled(kb: float) -> tuple[float, int]:
    """(value, index into _SIZE_UNITS) of a size in KiB, in the largest unit under 1024."""
    value = max(0.0, float(kb))
    unit = 0
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    return value, unit


def fmt_size_kb(kb: float | None) -> str:
    """A size in KiB, short (sacct's MAXRSS): 512K, 88M, 2.1G; one decimal below 10."""
    if kb is None:
        return ""
    value, unit = _scaled(kb)
    if unit and value < 10:
        text = f"{value:.1f}"
        if text == "10.0":  # 9.96G rounds up: print it as 10G, not 10.0G
            text = "10"
    else:
        text = f"{value:.0f}"
    return f"{text}{_SIZE_UNITS[unit]}"


def fmt_size_long(kb: float | None) -> str:
    """A size in KiB for a sentence (seff): 41.2 GiB, 880.0 MiB, 512.0 KiB; n/a when unknown."""
    if kb is None:
        return "n/a"
    value, unit = _scaled(kb)
    return f"{value:.1f} {_SIZE_UNITS[unit]}iB"


def fmt_percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.1f}%"


def ratio(used: float | None, available: float | None) -> float | None:
    """used / available, or None when either is unknown or nothing was available."""
    if used is None or available is None or available <= 0:
        return None
    return used / available


def cpu_efficiency(cpu_s: float | None, cpus: int | None, elapsed_s: float | None
                   ) -> float | None:
    """CPU time over core-walltime (CPUs x elapsed), like seff."""
    if cpus is None or elapsed_s is None:
        return None
    return ratio(cpu_s, cpus * elapsed_s)


def memory_efficiency(peak_rss_kb: float | None, memory_mb: int | None) -> float | None:
    """Peak RSS over the memory requested; None when no memory was requested."""
    if not memory_mb:
        return None
    return ratio(peak_rss_kb, memory_mb * 1024)


def exit_column(exit_code: int | None, signal: int | None) -> str:
    """sacct's ExitCode: `code:signal` (0:0, 3:0, 0:15 when killed by signal 15); empty when
    neither is known."""
    if exit_code is None and signal is None:
        return ""
    return f"{exit_code or 0}:{signal or 0}"


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def elapsed_s(started_at: str | None, finished_at: str | None, now: datetime) -> float | None:
    """Seconds from start to finish (to `now` while still running); None if it never started."""
    start = parse_iso(started_at)
    if start is None:
        return None
    end = parse_iso(finished_at) or now
    return max(0.0, (end - start).total_seconds())


def job_label(job: Mapping[str, Any]) -> str:
    """`12`, or `12_3` for element 3 of array job 12."""
    if job.get("array_task_id") is not None and job.get("array_job_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return str(job["id"])


def history_row(job: Mapping[str, Any], now: datetime) -> list[str]:
    """JOBID NAME ST ATTEMPT ELAPSED CPUS MAXRSS EXIT WORKER of one job (its current attempt)."""
    return [job_label(job), job["name"], job["state"], str(job["attempt"]),
            fmt_duration(elapsed_s(job.get("started_at"), job.get("finished_at"), now)),
            str(job["cpus"]), fmt_size_kb(job.get("peak_rss_kb")),
            exit_column(job.get("exit_code"), job.get("signal")), job.get("worker_id") or ""]


def efficiency(job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]
               ) -> dict[str, Any]:
    """seff's figures, from the last attempt that was placed (`scns eff --json`)."""
    last = attempts[-1] if attempts else None
    cpus = (last or {}).get("cpus") or job.get("cpus")
    # what the attempt was given; 0 or null: no memory was requested
    memory_mb = (last.get("memory_mb") if last else job.get("memory_mb")) or None
    elapsed = last.get("elapsed_s") if last else None
    cpu_s = last.get("cpu_s") if last else None
    peak = last.get("peak_rss_kb") if last else None
    return {
        "job_id": job["id"], "state": job["state"],
        "attempt": last["attempt"] if last else None,
        "cpus": cpus, "elapsed_s": elapsed, "cpu_s": cpu_s,
        "cpu_efficiency": cpu_efficiency(cpu_s, cpus, elapsed),
        "peak_rss_kb": peak, "memory_mb": memory_mb,
        "memory_efficiency": memory_efficiency(peak, memory_mb),
    }


def eff_lines(job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The seff report: four lines of `Label: value` cells, in aligned columns."""
    e = efficiency(job, attempts)
    last = attempts[-1] if attempts else None
    state = f"State: {job['state']}{_state_detail(job, last)}"
    cpus, elapsed = e["cpus"], e["elapsed_s"]
    core_walltime = cpus * elapsed if cpus is not None and elapsed is not None else None
    if e["cpu_efficiency"] is not None:
        cpu_eff = f"{fmt_percent(e['cpu_efficiency'])} of {fmt_duration(core_walltime)} " \
                  "core-walltime"
    else:
        cpu_eff = "n/a (not measured)" if last and elapsed else "n/a (has not run)"
    if e["memory_mb"] is None:
        mem_eff = "n/a (no memory requested)"
    else:
        mem_eff = f"{fmt_percent(e['memory_efficiency'])} of " \
                  f"{fmt_size_long(e['memory_mb'] * 1024)}"
    rss = fmt_size_long(e["peak_rss_kb"])
    rows = [
        [f"Job ID: {job_label(job)}", state, f"Attempts: {job['attempt']}"],
        [f"Cores: {cpus}", f"Wall-clock: {fmt_duration(elapsed) or 'n/a'}",
         f"Worker: {(last or {}).get('worker_id') or job.get('worker_id') or '-'}"],
        [f"CPU Utilized: {fmt_duration(e['cpu_s']) or 'n/a'}", f"CPU Efficiency: {cpu_eff}"],
        [f"Memory Utilized: {rss}" + (" (peak RSS)" if e["peak_rss_kb"] is not None else ""),
         f"Memory Efficiency: {mem_eff}"],
    ]
    return grid(rows)


def _state_detail(job: Mapping[str, Any], last: Mapping[str, Any] | None) -> str:
    if last is None:
        detail = "no attempt has run yet"
    elif last.get("finished_at") is None:
        detail = "starting: no figures yet" if last.get("started_at") is None \
            else "still running: figures so far"
    elif last["attempt"] != job["attempt"]:
        detail = f"figures of attempt {last['attempt']}"
    elif last.get("signal") is not None:
        detail = f"signal {last['signal']}"
    elif last.get("exit_code") is not None:
        detail = f"exit code {last['exit_code']}"
    else:
        return ""
    return f" ({detail})"


def grid(rows: Sequence[Sequence[str]], gap: int = 2) -> list[str]:
    """Rows of cells as lines with aligned columns (a row's last cell is not padded)."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return ["".join(cell.ljust(widths[i] + gap) for i, cell in enumerate(row[:-1])) + row[-1]
            for row in rows if row]
