"""The CLI's pure parts: begin times, durations, sizes, efficiencies, sacct's EXIT column, the
seff report and the new #SBATCH directives. No server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.cli.accounting import (
    cpu_efficiency,
    eff_lines,
    efficiency,
    elapsed_s,
    exit_column,
    fmt_duration,
    fmt_percent,
    fmt_size_kb,
    fmt_size_long,
    grid,
    history_row,
    memory_efficiency,
)
from services.cli.directives import (
    DirectiveError,
    parse_begin,
    parse_directives,
    parse_window,
    to_utc_iso,
)

CET = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 23, 13, 2, 11, tzinfo=CET)  # 12:02:11 UTC
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("now", utc(2026, 11, 23, 12, 2, 11)),
    ("NOW", utc(2026, 11, 23, 12, 2, 11)),
    ("now+90", utc(2026, 11, 23, 12, 3, 41)),             # seconds by default, as sbatch
    ("now+30s", utc(2026, 11, 23, 12, 2, 41)),
    ("now+5m", utc(2026, 11, 23, 12, 7, 11)),
    ("now+30minutes", utc(2026, 11, 23, 12, 32, 11)),
    ("now+1hour", utc(2026, 11, 23, 13, 2, 11)),
    ("now+2h", utc(2026, 11, 23, 14, 2, 11)),
    ("now+1d", utc(2026, 11, 24, 12, 2, 11)),
    ("now+3days", utc(2026, 11, 26, 12, 2, 11)),
    ("now+1week", utc(2026, 11, 30, 12, 2, 11)),
    ("14:30", utc(2026, 11, 23, 13, 30)),                 # later today, local time
    ("14:30:15", utc(2026, 11, 23, 13, 30, 15)),
    ("09:00", utc(2026, 11, 24, 8, 0)),                   # already past: tomorrow
    ("13:02:11", utc(2026, 11, 23, 12, 2, 11)),           # this very second: today
    ("noon", utc(2026, 11, 24, 11, 0)),
    ("midnight", utc(2026, 11, 23, 23, 0)),
    ("today", utc(2026, 11, 22, 23, 0)),
    ("tomorrow", utc(2026, 11, 23, 23, 0)),
    ("2026-11-24", utc(2026, 11, 23, 23, 0)),             # a date: its local midnight
    ("2026-11-24T02:30", utc(2026, 11, 24, 1, 30)),       # no offset: local time
    ("2026-11-24T02:30:45", utc(2026, 11, 24, 1, 30, 45)),
    ("2026-11-24 02:30", utc(2026, 11, 24, 1, 30)),
    ("2026-11-24T02:30:00Z", utc(2026, 11, 24, 2, 30)),
    ("2026-11-24t02:30:00z", utc(2026, 11, 24, 2, 30)),
    ("2026-11-24T02:30:00+05:00", utc(2026, 11, 23, 21, 30)),
    (" now+1hour ", utc(2026, 11, 23, 13, 2, 11)),
])
def test_parse_begin(text: str, expected: datetime) -> None:
    at = parse_begin(text, NOW)
    assert at == expected
    assert at.tzinfo is UTC


@pytest.mark.parametrize(("text", "expected"), [
    # the zone's rules, not today's offset: 2026-03-29 is the day Berlin goes to summer time
    ("2026-03-30T09:00", utc(2026, 3, 30, 7, 0)),
    ("2026-03-28T09:00", utc(2026, 3, 28, 8, 0)),
    ("tomorrow", utc(2026, 3, 28, 23, 0)),
])
def test_parse_begin_follows_daylight_saving(text: str, expected: datetime) -> None:
    assert parse_begin(text, datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)) == expected


@pytest.mark.parametrize("text", [
    "", "banana", "now-1h", "now+", "now+1fortnight", "now+1.5h", "25:00", "12:60", "12:00:61",
    "1230", "2026-13-01", "2026-11-31", "2026-11-24T25:00", "tomorrow+1h", "+1h", "now+99999999999",
])
def test_parse_begin_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_begin(text, NOW)
    message = str(e.value)
    assert repr(text) in message
    for form in ("now+N", "HH:MM[:SS]", "YYYY-MM-DD", "now+1hour"):
        assert form in message


def test_parse_begin_reads_a_naive_now_as_local_time() -> None:
    naive = datetime(2026, 11, 23, 13, 0)
    assert parse_begin("now+1h", naive) == naive.astimezone(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(("text", "expected"), [
    ("09:00", utc(2026, 11, 23, 8, 0)),                   # looking back: today even if past
    ("now-2hours", utc(2026, 11, 23, 10, 2, 11)),
    ("now-7d", utc(2026, 11, 16, 12, 2, 11)),
    ("2026-11-20", utc(2026, 11, 19, 23, 0)),
    ("today", utc(2026, 11, 22, 23, 0)),
])
def test_parse_window(text: str, expected: datetime) -> None:
    assert parse_window(text, NOW) == expected


def test_to_utc_iso() -> None:
    assert to_utc_iso(datetime(2026, 11, 24, 2, 30, 0, 123456, tzinfo=CET)) == \
        "2026-11-24T01:30:00Z"


@pytest.mark.parametrize(("seconds", "text"), [
    (None, ""), (0, "0:00:00"), (4, "0:00:04"), (4.9, "0:00:04"), (59, "0:00:59"),
    (60, "0:01:00"), (3600, "1:00:00"), (7987, "2:13:07"), (86399, "23:59:59"),
    (86400, "1-00:00:00"), (220811, "2-13:20:11"), (-5, "0:00:00"),
])
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(("kb", "text"), [
    (None, ""), (0, "0K"), (512, "512K"), (1023, "1023K"), (1024, "1.0M"), (1536, "1.5M"),
    (88 * 1024, "88M"), (int(2.1 * 1024 * 1024), "2.1G"), (10 * 1024 * 1024, "10G"),
    (int(9.99 * 1024 * 1024), "10G"), (3 * 1024**3, "3.0T"),
])
def test_fmt_size_kb(kb: int | None, text: str) -> None:
    assert fmt_size_kb(kb) == text


@pytest.mark.parametrize(("kb", "text"), [
    (None, "n/a"), (512, "512.0 KiB"), (880 * 1024, "880.0 MiB"),
    (int(41.2 * 1024 * 1024), "41.2 GiB"), (64 * 1024 * 1024, "64.0 GiB"),
])
def test_fmt_size_long(kb: int | None, text: str) -> None:
    assert fmt_size_long(kb) == text


@pytest.mark.parametrize(("cpu_s", "cpus", "elapsed", "expected"), [
    (220811, 32, 7987, 220811 / (32 * 7987)),             # seff's 86.4%
    (10.0, 1, 10.0, 1.0),
    (5.0, 2, 10.0, 0.25),
    (0.0, 4, 100.0, 0.0),
    (None, 4, 100.0, None),                               # not measured
    (5.0, 4, None, None),                                 # never started
    (5.0, 4, 0.0, None),                                  # no time elapsed
    (5.0, None, 10.0, None),
])
def test_cpu_efficiency(cpu_s: float | None, cpus: int | None, elapsed: float | None,
                        expected: float | None) -> None:
    assert cpu_efficiency(cpu_s, cpus, elapsed) == pytest.approx(expected)


@pytest.mark.parametrize(("peak_kb", "memory_mb", "expected"), [
    (int(41.2 * 1024 * 1024), 64 * 1024, 0.64375),
    (1024, 1, 1.0),
    (2048, 1, 2.0),                                       # over its request
    (None, 1024, None),
    (1024, None, None),                                   # no memory requested
    (1024, 0, None),
])
def test_memory_efficiency(peak_kb: int | None, memory_mb: int | None,
                           expected: float | None) -> None:
    got = memory_efficiency(peak_kb, memory_mb)
    assert got == (None if expected is None else pytest.approx(expected, rel=1e-3))


@pytest.mark.parametrize(("fraction", "text"), [
    (None, "n/a"), (0.0, "0.0%"), (0.864, "86.4%"), (1.0, "100.0%"), (1.5, "150.0%"),
])
def test_fmt_percent(fraction: float | None, text: str) -> None:
    assert fmt_percent(fraction) == text


@pytest.mark.parametrize(("exit_code", "signal", "text"), [
    (0, None, "0:0"), (3, None, "3:0"), (None, 15, "0:15"), (0, 9, "0:9"), (None, None, ""),
    (137, None, "137:0"),
])
def test_exit_column(exit_code: int | None, signal: int | None, text: str) -> None:
    assert exit_column(exit_code, signal) == text


@pytest.mark.parametrize(("started", "finished", "expected"), [
    (None, None, None),
    ("2026-11-23T10:00:00Z", "2026-11-23T11:00:00Z", 3600.0),
    ("2026-11-23T12:00:00Z", None, 131.0),                # still running: until now
    ("2026-11-23T12:00:00+00:00", "2026-11-23T12:00:04.500000Z", 4.5),
])
def test_elapsed(started: str | None, finished: str | None, expected: float | None) -> None:
    assert elapsed_s(started, finished, NOW) == expected


JOB: dict[str, Any] = {
    "id": 4009, "name": "train", "user": "carol", "state": "COMPLETED", "attempt": 1,
    "cpus": 32, "memory_mb": 65536, "worker_id": "arm-node-02", "exit_code": 0, "signal": None,
    "started_at": "2026-11-23T08:00:00Z", "finished_at": "2026-11-23T10:13:07Z",
    "peak_rss_kb": int(41.2 * 1024 * 1024), "cpu_s": 220811.0,
}
ATTEMPT: dict[str, Any] = {
    "attempt": 1, "worker_id": "arm-node-02", "cpus": 32, "memory_mb": 65536,
    "state": "COMPLETED", "reason": None, "exit_code": 0, "signal": None,
    "allocated_at": "2026-11-23T07:59:59Z", "started_at": "2026-11-23T08:00:00Z",
    "finished_at": "2026-11-23T10:13:07Z", "elapsed_s": 7987.0,
    "peak_rss_kb": int(41.2 * 1024 * 1024), "cpu_user_s": 220000.0, "cpu_system_s": 811.0,
    "cpu_s": 220811.0,
}


def test_history_row() -> None:
    assert history_row(JOB, NOW) == ["4009", "train", "COMPLETED", "1", "2:13:07", "32",
                                     "41G", "0:0", "arm-node-02"]
    pending = {**JOB, "state": "PENDING", "started_at": None, "finished_at": None,
               "worker_id": None, "exit_code": None, "peak_rss_kb": None}
    assert history_row(pending, NOW)[3:] == ["1", "", "32", "", "", ""]


def test_eff_report_like_seff() -> None:
    lines = eff_lines(JOB, [ATTEMPT])
    assert len(lines) == 4
    assert lines[0].startswith("Job ID: 4009")
    assert "State: COMPLETED (exit code 0)" in lines[0]
    assert lines[0].endswith("Attempts: 1")
    assert "Cores: 32" in lines[1] and "Wall-clock: 2:13:07" in lines[1]
    assert lines[1].endswith("Worker: arm-node-02")
    assert "CPU Utilized: 2-13:20:11" in lines[2]
    assert "CPU Efficiency: 86.4% of 2-22:59:44 core-walltime" in lines[2]
    assert "Memory Utilized: 41.2 GiB (peak RSS)" in lines[3]
    assert "Memory Efficiency: 64.4% of 64.0 GiB" in lines[3]
    # the second column starts at the same place on every line
    assert len({line.index(cell) for line, cell in zip(
        lines, ("State:", "Wall-clock:", "CPU Efficiency:", "Memory Efficiency:"),
        strict=True)}) == 1


def test_eff_of_a_running_job_without_memory_request() -> None:
    job = {**JOB, "state": "RUNNING", "memory_mb": None, "finished_at": None}
    attempt = {**ATTEMPT, "memory_mb": 0, "finished_at": None, "state": "RUNNING",
               "exit_code": None}
    text = "\n".join(eff_lines(job, [attempt]))
    assert "State: RUNNING (still running: figures so far)" in text
    assert "Memory Efficiency: n/a (no memory requested)" in text
    figures = efficiency(job, [attempt])
    assert figures["memory_efficiency"] is None and figures["memory_mb"] is None
    assert figures["cpu_efficiency"] == pytest.approx(0.864, abs=1e-3)


def test_eff_uses_the_last_attempt() -> None:
    first = {**ATTEMPT, "state": "FAILED", "exit_code": 3, "cpu_s": 1.0}
    second = {**ATTEMPT, "attempt": 2, "cpu_s": 7987.0 * 16, "peak_rss_kb": 32 * 1024 * 1024}
    figures = efficiency({**JOB, "attempt": 2}, [first, second])
    assert figures == {
        "job_id": 4009, "state": "COMPLETED", "attempt": 2, "cpus": 32, "elapsed_s": 7987.0,
        "cpu_s": 7987.0 * 16, "cpu_efficiency": 0.5, "peak_rss_kb": 32 * 1024 * 1024,
        "memory_mb": 65536, "memory_efficiency": 0.5,
    }
    assert "Attempts: 2" in eff_lines({**JOB, "attempt": 2}, [first, second])[0]


def test_eff_before_any_attempt() -> None:
    job = {**JOB, "state": "PENDING", "worker_id": None}
    figures = efficiency(job, [])
    assert figures["attempt"] is None and figures["cpu_efficiency"] is None
    text = "\n".join(eff_lines(job, []))
    assert "no attempt has run yet" in text and "Wall-clock: n/a" in text


def test_grid_aligns_columns() -> None:
    assert grid([["a", "bb", "c"], ["ccc", "d"]]) == ["a    bb  c", "ccc  d"]


def test_begin_and_priority_directives() -> None:
    d = parse_directives("#!/bin/bash\n#SBATCH --begin=now+1hour\n#SBATCH --priority=5\n"
                         "echo hi\n", now=NOW)
    assert d.begin_at == utc(2026, 11, 23, 13, 2, 11)
    assert d.priority == 5
    assert d.warnings == []


@pytest.mark.parametrize(("line", "begin"), [
    ("#SBATCH -b 14:30", utc(2026, 11, 23, 13, 30)),
    ("#SCNS --begin 2026-11-24T02:30", utc(2026, 11, 24, 1, 30)),
])
def test_begin_directive_forms(line: str, begin: datetime) -> None:
    assert parse_directives(line + "\n", now=NOW).begin_at == begin


def test_begin_directive_defaults_to_the_current_time() -> None:
    before = datetime.now(UTC)
    d = parse_directives("#SBATCH --begin=now+1hour\n")
    assert d.begin_at is not None
    assert timedelta(minutes=59) < d.begin_at - before < timedelta(minutes=61)


@pytest.mark.parametrize(("script", "message"), [
    ("#SBATCH --begin=banana\n", "line 1: bad begin time 'banana'"),
    ("#SBATCH --priority=high\n", "--priority must be an integer"),
    ("#!/bin/sh\n#SBATCH --priority\n", "line 2: --priority needs a value"),
])
def test_bad_directives(script: str, message: str) -> None:
    with pytest.raises(DirectiveError, match=message):
        parse_directives(script, now=NOW)
