"""`scns schedule …` without a server: the pure formatting, and the click commands against a
fake client (the bodies they send, what they print, how they fail)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from services.cli import main as cli_main
from services.cli import schedules
from services.cli.client import ApiError
from shared.db.schedules import CATCH_UP, CONCURRENCY
from tests.fakes import FakeClient

S3: dict[str, Any] = {
    "id": 3, "name": "nightly-etl", "user": "alice", "cron": "30 2 * * *",
    "timezone": "Europe/Berlin", "concurrency": "forbid", "catch_up": "once",
    "max_failures": 3, "enabled": True, "disabled_reason": None,
    "next_run_at": "2026-11-24T01:30:00Z", "last_run_at": "2026-11-23T01:30:00Z",
    "last_job_id": 4012, "run_count": 41, "failure_count": 0, "consecutive_failures": 0,
    "created_at": "2026-10-01T10:00:00Z", "updated_at": "2026-10-01T10:00:00Z",
    "job": {"name": "nightly-etl", "cpus": 4, "memory_mb": 2048, "time_limit": 3600,
            "priority": 0, "array": None, "hold": False},
}
S5: dict[str, Any] = {
    **S3, "id": 5, "name": "hourly-sync", "cron": "@hourly", "timezone": "UTC",
    "enabled": False, "next_run_at": None, "run_count": 212, "failure_count": 3,
    "consecutive_failures": 3,
    "disabled_reason": "3 consecutive failed runs (the last: job 4100 FAILED); `scns schedule "
                       "enable 5` starts it again",
}
RUNS = {"items": [
    {"id": 9, "schedule_id": 3, "fire_at": "2026-11-23T01:30:00Z", "kind": "cron",
     "job_id": 4012, "state": "COMPLETED", "skipped": None, "created_at": "2026-11-23T01:30:00Z"},
    {"id": 8, "schedule_id": 3, "fire_at": "2026-11-22T01:30:00Z", "kind": "cron",
     "job_id": None, "state": None, "created_at": "2026-11-22T01:30:00Z",
     "skipped": "the previous run (job 4000) is still active (concurrency=forbid)"},
], "next_cursor": None}


def by_name(query: Mapping[str, Any] | None) -> dict[str, Any]:
    name = (query or {}).get("name")
    return {"items": [s for s in (S3, S5) if name in (None, s["name"])], "next_cursor": None}


NOT_FOUND = ApiError(404, "not_found", "schedule 77 does not exist")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient({
        ("GET", "/api/v1/schedules"): by_name,
        ("GET", "/api/v1/schedules/3"): S3, ("GET", "/api/v1/schedules/5"): S5,
        ("GET", "/api/v1/schedules/77"): NOT_FOUND,
        ("GET", "/api/v1/schedules/3/runs"): RUNS,
        ("GET", "/api/v1/schedules/5/runs"): {"items": [], "next_cursor": None},
    })
    monkeypatch.setattr(schedules, "client", lambda: c)
    monkeypatch.setenv("TZ", "UTC")
    return c


def run(*args: str, input_: str | None = None) -> Result:
    return CliRunner().invoke(cli_main.cli, ["schedule", *args], input=input_)


def test_the_choices_are_the_stores() -> None:
    assert schedules.CONCURRENCY == CONCURRENCY and schedules.CATCH_UP == CATCH_UP


@pytest.mark.parametrize(("reason", "short"), [
    (S5["disabled_reason"], "3 failures in a row"), ("disabled by alice", "by alice"),
    ("the schedule no longer parses: unknown time zone 'X/Y' (use an IANA name like Europe/"
     "Paris)", "the schedule no longer parses: unknown …"), (None, ""),
])
def test_short_reasons(reason: str | None, short: str) -> None:
    assert schedules.short_reason(reason) == short


def test_the_list_cells_are_the_ux_sketch() -> None:
    columns = schedules.list_columns([S3, S5])
    assert columns == ["ID", "NAME", "CRON", "TZ", "NEXT RUN", "LAST", "RUNS", "FAIL", "STATE"]
    assert schedules.list_cells(S3, columns) == [
        "3", "nightly-etl", "30 2 * * *", "Europe/Berlin", "2026-11-24 02:30 CET", "✓", "41",
        "0", "enabled"]
    assert schedules.list_cells(S5, columns) == [
        "5", "hourly-sync", "@hourly", "UTC", "-", "✗ 3", "212", "3",
        "disabled (3 failures in a row)"]
    assert "USER" in schedules.list_columns([S3, {**S5, "user": "bob"}])
    assert schedules.last_text({"run_count": 0, "consecutive_failures": 0}) == "-"


def test_add_builds_the_job_as_submit_does(fake: FakeClient, tmp_path: Path) -> None:
    script = tmp_path / "etl.sh"
    script.write_text("#!/bin/bash\n#SBATCH -c 4\n#SBATCH --time=60\n#SBATCH --mem=2G\n"
                      "#SBATCH --account=x\necho etl\n")
    fake.answers[("POST", "/api/v1/schedules")] = S3
    result = run("add", "nightly-etl", str(script), "--cron", "30 2 * * *", "--tz",
                 "Europe/Berlin", "--concurrency", "replace", "--max-failures", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("Created schedule 3 (nightly-etl): 30 2 * * * (Europe/Berlin), "
                             "next run 2026-11-24 02:30 CET\n")
    assert "--account=x ignored" in result.stderr
    method, path, body, _ = fake.calls[-1]
    assert (method, path) == ("POST", "/api/v1/schedules")
    assert {k: body[k] for k in ("name", "cron", "timezone", "concurrency", "max_failures")} == {
        "name": "nightly-etl", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "concurrency": "replace", "max_failures": 0}
    assert "enabled" not in body and "catch_up" not in body
    job = body["job"]
    assert (job["cpus"], job["time_limit"], job["memory_mb"]) == (4, 3600, 2048)
    assert job["name"] == "nightly-etl" and job["script"] == script.read_text()


def test_add_disabled_with_a_job_name_and_wrap(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/schedules")] = S5
    result = run("add", "hourly-sync", "--wrap", "rsync a b", "--cron", "@hourly", "-J", "sync",
                 "--disabled", "--catch-up", "skip")
    assert result.exit_code == 0, result.output
    assert "disabled (`scns schedule enable` starts it)" in result.stdout
    body = fake.calls[-1][2]
    assert body["enabled"] is False and body["catch_up"] == "skip"
    assert body["job"]["name"] == "sync" and body["job"]["script"] == "#!/bin/sh\nrsync a b\n"


@pytest.mark.parametrize(("line", "words"), [
    ("#SBATCH --begin=now+1hour", "--begin: a schedule's job begins at each fire time"),
    ("#SBATCH --dependency=afterok:12", "--dependency: each fire makes a new job"),
])
def test_add_refuses_a_begin_time_or_a_dependency(fake: FakeClient, tmp_path: Path, line: str,
                                                  words: str) -> None:
    script = tmp_path / "x.sh"
    script.write_text(f"#!/bin/sh\n{line}\ntrue\n")
    result = run("add", "x", str(script), "--cron", "@daily")
    assert result.exit_code == 2
    assert words in result.stderr and "(nothing created)" in result.stderr
    assert fake.calls == []


def test_add_reports_the_gateways_refusal(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/schedules")] = ApiError(
        400, "invalid_timezone", "'timezone': unknown time zone 'Europe/Berln' (did you mean "
        "Europe/Berlin?)")
    result = run("add", "x", "--wrap", "true", "--cron", "@daily", "--tz", "Europe/Berln")
    assert result.exit_code == 1
    assert result.stderr == ("error: 'timezone': unknown time zone 'Europe/Berln' (did you mean "
                             "Europe/Berlin?) (nothing created)\n")


def test_add_needs_a_script_and_a_cron(fake: FakeClient) -> None:
    assert run("add", "x", "--cron", "@daily").exit_code == 2
    assert run("add", "x", "--wrap", "true").exit_code == 2
    assert fake.calls == []


def test_list(fake: FakeClient) -> None:
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "CRON", "TZ", "NEXT", "RUN", "LAST", "RUNS",
                                "FAIL", "STATE"]
    assert "nightly-etl" in lines[1] and lines[1].rstrip().endswith("enabled")
    assert lines[2].rstrip().endswith("disabled (3 failures in a row)")
    assert run("list", "--json").stdout.count('"id"') == 2


def test_show_by_name_with_its_runs(fake: FakeClient) -> None:
    result = run("show", "nightly-etl")
    assert result.exit_code == 0, result.output
    assert ("GET", "/api/v1/schedules", None, {"name": "nightly-etl"}) in fake.calls
    text = result.stdout
    assert "cron:" in text and "30 2 * * * (Europe/Berlin)" in text
    assert "next run:" in text and "2026-11-24 02:30 CET" in text
    assert "last run:" in text and "(job 4012)" in text
    assert "'nightly-etl', 4 CPUs, 2048M, 1:00:00" in text
    assert "recent runs:" in text and "skipped: the previous run (job 4000)" in text
    assert "disabled_reason" not in text


def test_show_a_disabled_schedule_says_why(fake: FakeClient) -> None:
    result = run("show", "5")
    assert result.exit_code == 0, result.output
    assert "disabled_reason:" in result.stdout and "3 consecutive failed runs" in result.stdout


@pytest.mark.parametrize(("ref", "words"), [
    ("nope", "no schedule named 'nope'"), ("77", "schedule 77 does not exist"),
    ("a b", "is not a schedule id or name"),
])
def test_unknown_schedules_are_one_line_errors(fake: FakeClient, ref: str, words: str) -> None:
    result = run("show", ref)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and words in result.stderr


def test_an_ambiguous_name_asks_for_an_id(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/schedules")] = {
        "items": [S3, {**S3, "id": 7, "user": "bob"}], "next_cursor": None}
    result = run("trigger", "nightly-etl")
    assert result.exit_code == 1
    assert "2 schedules are named 'nightly-etl': 3 (alice), 7 (bob); give an id" in result.stderr


def test_trigger(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/schedules/3/trigger")] = {
        "run": {"id": 10, "job_id": 4013}, "job": {"id": 4013, "name": "nightly-etl"}}
    result = run("trigger", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Submitted batch job 4013 (schedule nightly-etl)\n"
    fake.answers[("POST", "/api/v1/schedules/3/trigger")] = {
        "run": {"id": 11, "job_id": 4020}, "job": {"id": 4020, "array": {
            "id": 4020, "spec": "0-9%2", "throttle": 2, "count": 10}}}
    assert run("trigger", "3").stdout == ("Submitted batch job 4020 (schedule nightly-etl, array "
                                          "of 10, at most 2 at once)\n")


def test_a_skipped_trigger_says_why_and_exits_1(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/schedules/3/trigger")] = ApiError(
        409, "run_active", "the previous run (job 4013) is still active (concurrency=forbid)")
    result = run("trigger", "nightly-etl")
    assert result.exit_code == 1
    assert result.stderr == ("error: the previous run (job 4013) is still active "
                             "(concurrency=forbid)\n")


def test_runs(fake: FakeClient) -> None:
    result = run("runs", "3", "-n", "2")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][3] == {"limit": 2}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FIRE", "TIME", "KIND", "JOB", "STATE"]
    assert "2026-11-23 02:30:00 CET" in lines[1] and "4012" in lines[1]
    assert "COMPLETED" in lines[1]
    assert "skipped: the previous run" in lines[2] and " - " in lines[2]


def test_enable_disable_rm(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/schedules/5/enable")] = {
        **S5, "enabled": True, "next_run_at": "2026-11-23T14:00:00Z"}
    fake.answers[("POST", "/api/v1/schedules/3/disable")] = {**S3, "enabled": False}
    fake.answers[("DELETE", "/api/v1/schedules/3")] = ""
    result = run("enable", "hourly-sync")
    assert result.stdout == "schedule 5 (hourly-sync) enabled: next run 2026-11-23 14:00 UTC\n"
    assert run("disable", "3").stdout == "schedule 3 (nightly-etl) disabled\n"
    result = run("rm", "3", "nope")
    assert result.exit_code == 1
    assert result.stdout == "schedule 3 (nightly-etl) deleted\n"
    assert "no schedule named 'nope'" in result.stderr
