"""The CLI's array and submit logic without a server: squeue's folding, job references, the
summary lines, and the POST /jobs body built from directives and options. The last tests drive
the click commands against a fake client."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click
import pytest
from click.testing import CliRunner

from services.cli import jobs
from services.cli import main as cli_main
from services.cli.arrays import (
    QueueRow,
    array_control_line,
    array_note,
    element_refs,
    is_array_answer,
    progress_of,
    queue_cells,
    queue_complete,
    queue_rows,
    squeue_time,
    submitted_line,
    wait_summary,
    would_submit,
)
from services.cli.client import ApiError
from services.cli.common import JOB
from services.cli.directives import Directives, parse_directives
from services.cli.jobs import (
    Export,
    OptionError,
    SubmitOptions,
    build_submission,
    job_environment,
    parse_export,
    wrap_script,
)
from tests.fakes import FakeClient

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def job(id_: int, state: str = "PENDING", *, array: int | None = None, index: int | None = None,
        reason: str | None = None, throttle: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "name": "sweep", "user": "alice", "state": state,
            "reason": reason if reason is not None else
            ("Priority" if state == "PENDING" else None),
            "cpus": 1, "partition": "default", "worker_id": None, "array_job_id": array,
            "array_task_id": index, "array_throttle": throttle, "started_at": None,
            "finished_at": None, **extra}


def array_jobs(array: int, indexes: range, state: str = "PENDING", **kw: Any
               ) -> list[dict[str, Any]]:
    """Elements listed newest first (the largest id, so the largest index, first)."""
    return [job(array + i - indexes.start, state, array=array, index=i, **kw)
            for i in reversed(indexes)]


# --- job references ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ref"), [
    ("12", "12"), ("12_3", "12_3"), (" 7 ", "7"), ("012", "12"), ("4013_0", "4013_0"),
])
def test_job_ref_accepts_ids_and_elements(text: str, ref: str) -> None:
    assert JOB.convert(text, None, None) == ref


@pytest.mark.parametrize("text", ["", "x", "12_", "_3", "12_3_4", "12-3", "0", "-1", "12.0",
                                  "12 3", "1_x"])
def test_job_ref_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"use a job id \(12\) or an array element "
                                                 r"\(12_3\)"):
        JOB.convert(text, None, None)


def test_a_bad_ref_is_one_error_line() -> None:
    result = CliRunner().invoke(cli_main.cli, ["cancel", "12", "4_x"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: bad job id '4_x': use a job id (12) or an array " \
                                    "element (12_3)"


# --- queue folding ----------------------------------------------------------------------------
def labels(rows: list[QueueRow]) -> list[str]:
    return [r.label for r in rows]


@pytest.mark.parametrize(("items", "expected"), [
    ([], []),
    ([job(9), job(8, "RUNNING", worker_id="w1")], ["9", "8"]),
    # pending elements fold where the first of them is listed; others one line each
    ([*array_jobs(4012, range(37, 1000), reason="JobArrayTaskLimit", throttle=8),
      job(4012, "RUNNING", array=4012, index=36, throttle=8),
      job(4011, reason="Dependency")],
     ["4012_[37-999%8]", "4012_36", "4011"]),
    # a single pending element is its own ID_INDEX line
    ([job(21, array=20, index=1), job(20, "RUNNING", array=20, index=0)], ["20_1", "20_0"]),
    # gaps and steps, as squeue
    ([job(5 + i, array=5, index=x) for i, x in enumerate([7, 6, 5, 3, 1])], ["5_[1,3,5-7]"]),
    ([job(5 + i, array=5, index=x) for i, x in enumerate([8, 6, 4, 2, 0])], ["5_[0-8:2]"]),
    # elements that differ (one held on its own) fold apart
    ([job(33, array=30, index=3), job(32, array=30, index=2, reason="Held"),
      job(31, array=30, index=1), job(30, array=30, index=0)],
     ["30_[0-1,3]", "30_2"]),
    # two arrays interleaved with plain jobs
    ([job(104, array=103, index=1), job(103, array=103, index=0), job(102),
      job(101, array=100, index=1), job(100, array=100, index=0)],
     ["103_[0-1]", "102", "100_[0-1]"]),
])
def test_queue_folds_pending_elements(items: list[dict[str, Any]], expected: list[str]) -> None:
    assert labels(queue_rows(items)) == expected


def test_queue_fold_counts_and_first_element() -> None:
    rows = queue_rows(array_jobs(50, range(10), throttle=2))
    assert len(rows) == 1
    assert (rows[0].count, rows[0].job["array_task_id"], rows[0].complete) == (10, 0, True)


def test_queue_unfolds_with_array() -> None:
    items = array_jobs(50, range(3))
    assert labels(queue_rows(items, unfold=True)) == ["50_2", "50_1", "50_0"]


@pytest.mark.parametrize(("listed_down_to", "label", "complete"), [
    (None, "50_[0-9]", True),   # the listing ended
    (50, "50_[0-9]", True),     # it went down to the array's own id: every element seen
    (49, "50_[0-9]", True),
    (55, "50_[…,5-9]", False),  # elements with ids below 55 were not listed
])
def test_queue_marks_a_fold_the_listing_cut(listed_down_to: int | None, label: str,
                                            complete: bool) -> None:
    items = array_jobs(50, range(10))
    if listed_down_to and listed_down_to > 50:
        items = [j for j in items if j["id"] >= listed_down_to]
    rows = queue_rows(items, listed_down_to=listed_down_to)
    assert (rows[0].label, rows[0].complete) == (label, complete)


def test_queue_fold_cut_short_takes_the_indexes_from_the_summary() -> None:
    listed = array_jobs(50, range(5, 10), throttle=4)  # ids 55..50+9: the listing stopped at 55
    rows = queue_rows(listed, listed_down_to=55, pending_indexes={50: (2, *range(4, 10))})
    assert [(r.label, r.count, r.complete) for r in rows] == [("50_[2,4-9%4]", 7, True)]
    # two folds of the array (a held element among them): which indexes are whose is unknown
    listed[0] = {**listed[0], "reason": "Held"}
    rows = queue_rows(listed, listed_down_to=55, pending_indexes={50: tuple(range(10))})
    assert [(r.label, r.complete) for r in rows] == [("50_[…,9%4]", False),
                                                     ("50_[…,5-8%4]", False)]


def test_queue_complete_needs_limit_lines_that_will_not_change() -> None:
    done = QueueRow(label="1", job=job(1))
    cut = QueueRow(label="2_[…,5-9]", job=job(2), complete=False)
    assert queue_complete([done, done], 2)
    assert not queue_complete([done], 2)
    assert not queue_complete([done, cut], 2)
    assert queue_complete([done, cut], 1)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "0:00"), (0, "0:00"), (41, "0:41"), (600, "10:00"), (7987, "2:13:07"),
    (86400 + 7987, "1-02:13:07"),
])
def test_squeue_time(seconds: float | None, text: str) -> None:
    assert squeue_time(seconds) == text


def test_queue_cells() -> None:
    pending = queue_rows(array_jobs(4012, range(37, 40), reason="JobArrayTaskLimit",
                                    throttle=8))[0]
    assert queue_cells(pending, NOW) == ["4012_[37-39%8]", "default", "sweep", "alice", "PD",
                                         "0:00", "1", "(JobArrayTaskLimit)"]
    running = QueueRow(label="4012_36", job=job(
        4048, "RUNNING", array=4012, index=36, worker_id="arm-node-07",
        started_at="2026-11-23T11:59:19Z"))
    assert queue_cells(running, NOW) == ["4012_36", "default", "sweep", "alice", "R", "0:41",
                                         "1", "arm-node-07"]
    assert queue_cells(running, NOW, long=True)[4] == "RUNNING"


# --- summary lines ----------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "line"), [
    ({"id": 4011}, "Submitted batch job 4011"),
    ({"id": 4012, "array": {"id": 4012, "count": 1000, "throttle": 8}},
     "Submitted batch job 4012 (array of 1000, at most 8 at once)"),
    ({"id": 7, "array": {"id": 7, "count": 3, "throttle": None}},
     "Submitted batch job 7 (array of 3)"),
])
def test_submitted_line(answer: dict[str, Any], line: str) -> None:
    assert submitted_line(answer) == line


def test_array_note() -> None:
    assert array_note(None, None) == ""
    assert array_note(10, 2) == "array of 10, at most 2 at once"


@pytest.mark.parametrize(("states", "refs", "line"), [
    ({"COMPLETED": 995, "FAILED": 5}, ["4013_17", "4013_233", "4013_400", "4013_401",
                                      "4013_900"],
     "job 4013: 995 COMPLETED, 5 FAILED (4013_17, 4013_233, 4013_400, 4013_401, 4013_900)"),
    ({"COMPLETED": 990, "FAILED": 8, "TIMEOUT": 2},
     [f"4013_{i}" for i in range(10)],
     "job 4013: 990 COMPLETED, 8 FAILED, 2 TIMEOUT (4013_0, 4013_1, 4013_2, 4013_3, 4013_4, …)"),
    ({"COMPLETED": 10, "FAILED": 0}, [], "job 4013: 10 COMPLETED"),
    ({"CANCELLED": 3}, ["4013_0", "4013_1"], "job 4013: 3 CANCELLED (4013_0, 4013_1, …)"),
])
def test_wait_summary(states: dict[str, int], refs: list[str], line: str) -> None:
    assert wait_summary(4013, states, refs) == line


def test_element_refs_in_index_order() -> None:
    items = [job(30, array=20, index=10), job(23, array=20, index=3)]
    assert element_refs(items) == ["20_3", "20_10"]


def test_progress_of() -> None:
    p = progress_of({"count": 100, "states": {"PENDING": 40, "ALLOCATED": 2, "RUNNING": 6,
                                              "COMPLETED": 50, "FAILED": 1, "TIMEOUT": 1}})
    assert (p.total, p.done, p.completed, p.failed, p.running, p.pending, p.finished) == \
        (100, 52, 50, 2, 8, 40, False)
    assert progress_of({"count": 2, "states": {"COMPLETED": 2}}).finished


@pytest.mark.parametrize(("verb", "answer", "line"), [
    ("cancel", {"array_job_id": 12, "count": 98, "stopping": 2},
     "array 12: 98 elements cancelled, 2 stopping"),
    ("cancel", {"array_job_id": 12, "count": 1, "stopping": 0}, "array 12: 1 element cancelled"),
    ("cancel", {"array_job_id": 12, "count": 0, "stopping": 6}, "array 12: 6 elements stopping"),
    ("cancel", {"array_job_id": 12, "count": 0, "stopping": 0},
     "array 12: nothing to cancel: every element has finished"),
    ("hold", {"array_job_id": 12, "count": 100, "stopping": 0}, "array 12: 100 elements held"),
    ("release", {"array_job_id": 12, "count": 0, "stopping": 0},
     "array 12: no held element to release"),
])
def test_array_control_line(verb: str, answer: dict[str, Any], line: str) -> None:
    assert is_array_answer(answer)
    assert array_control_line(verb, answer) == line


def test_a_job_answer_is_not_an_array_answer() -> None:
    assert not is_array_answer(job(12, array=12, index=0))


def test_would_submit() -> None:
    body = {"script": "x", "cpus": 1, "name": "sweep", "array": "0-9%2", "hold": True}
    line = would_submit({"id": None, "name": "sweep", "cpus": 1, "time_limit": 3600,
                         "memory_mb": 512, "dependency": "afterok:12", "state": "PENDING",
                         "reason": "Held"}, 10, body)
    assert line == ("would submit: job 'sweep', array of 10, at most 2 at once, 1 CPU, "
                    "512M memory, time limit 1:00:00, dependency afterok:12, held; "
                    "nothing submitted")
    plain = would_submit({"id": None, "name": "x", "cpus": 4}, None, {"cpus": 4})
    assert plain == "would submit: job 'x', 4 CPUs, no time limit; nothing submitted"


# --- the submit body --------------------------------------------------------------------------
SCRIPT = "#!/bin/bash\n"
ENVIRON = {"HOME": "/home/alice", "OMP_NUM_THREADS": "8"}


def body_of(text: str = SCRIPT, environ: Mapping[str, str] = ENVIRON, **options: Any
            ) -> dict[str, Any]:
    opts = SubmitOptions(**{"script": "sweep.sh", **options})
    body, _ = build_submission(text, parse_directives(text), opts, cwd="/home/alice/run",
                               environ=environ)
    return body


def test_body_defaults() -> None:
    assert body_of() == {"script": SCRIPT, "cpus": 1, "name": "sweep.sh",
                         "submit_dir": "/home/alice/run"}


@pytest.mark.parametrize(("directives", "options", "expected"), [
    ("#SBATCH --array=0-999%8", {}, {"array": "0-999%8"}),
    ("#SBATCH --array=0-999%8", {"array": " 1,3,5-7 "}, {"array": "1,3,5-7"}),
    ("#SBATCH -d afterok:12", {}, {"dependency": "afterok:12"}),
    ("", {"dependency": "afterany:13_4?afterok:12"},
     {"dependency": "afterany:13_4?afterok:12"}),
    ("#SBATCH -o out-%A_%a.txt -e err-%j.txt", {},
     {"output": "out-%A_%a.txt", "error": "err-%j.txt"}),
    ("#SBATCH -o a.txt", {"output": "b.txt"}, {"output": "b.txt"}),
    ("#SBATCH -D data", {}, {"workdir": "/home/alice/run/data"}),
    ("", {"chdir": "../other/./x"}, {"workdir": "/home/alice/other/x"}),
    ("#SBATCH -D /scratch", {"chdir": "/tmp"}, {"workdir": "/tmp"}),
    ("#SBATCH --nice", {}, {"nice": 100}),
    ("#SBATCH --nice=5", {"nice": 0}, {"nice": 0}),
    ("#SBATCH -c 4 --mem-per-cpu=1G", {}, {"cpus": 4, "memory_mb": 4096}),
    ("#SBATCH -c 4 --mem-per-cpu=1G", {"cpus": 2}, {"cpus": 2, "memory_mb": 2048}),
    ("#SBATCH -c 4 --mem=1G", {"mem": "512M"}, {"cpus": 4, "memory_mb": 512}),
    ("#SBATCH -t 10", {}, {"time_limit": 600}),
    ("#SBATCH -t 10", {"time": "1:00:00"}, {"time_limit": 3600}),
    ("#SBATCH -J a -H --priority=3", {"name": "b"}, {"name": "b", "hold": True,
                                                       "priority": 3}),
    ("#SBATCH --requeue", {"requeue": False}, {}),
    ("#SBATCH --export=A=1,OMP_NUM_THREADS", {}, {"env": {"OMP_NUM_THREADS": "8", "A": "1"}}),
    # the command line's --export replaces the script's; --env adds on top
    ("#SBATCH --export=A=1", {"export": "ALL,B=2,HOME", "env": ("C=3", "B=4")},
     {"env": {"HOME": "/home/alice", "B": "4", "C": "3"}}),
    ("#SBATCH --export=A=1", {"export": "NONE"}, {}),
])
def test_body_from_directives_and_options(directives: str, options: dict[str, Any],
                                          expected: dict[str, Any]) -> None:
    body = body_of(SCRIPT + directives + "\n", **options)
    fixed = {"script", "submit_dir"}
    defaults = {"cpus": 1, "name": "sweep.sh"}
    assert {k: v for k, v in body.items() if k not in fixed} == {**defaults, **expected}


def test_time_unlimited_on_the_command_line_wins() -> None:
    assert "time_limit" not in body_of(SCRIPT + "#SBATCH -t 10\n", time="UNLIMITED")


@pytest.mark.parametrize(("options", "message"), [
    ({"time": "banana"}, "--time=banana: expected minutes"),
    ({"mem": "lots"}, "--mem=lots: expected megabytes"),
    ({"array": "5-1"}, "--array=5-1: array range '5-1' ends before it starts"),
    ({"array": "0-9%0"}, "--array=0-9%0: array limit"),
    ({"dependency": "whenever:3"}, "--dependency=whenever:3: "),
    ({"export": "ALL,NONE"}, "--export=ALL,NONE: ALL and NONE contradict each other"),
    ({"export": "1A=b"}, "--export=1A=b: '1A' is not a variable name"),
    ({"env": ("novalue",)}, "--env novalue: expected NAME=value"),
])
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError) as e:
        body_of(**options)
    assert str(e.value).startswith(message), str(e.value)


def test_names_and_default_names() -> None:
    assert body_of(script="-")["name"] == "stdin"
    assert body_of(script=None)["name"] == "wrap"
    assert body_of(script="dir/job.sh")["name"] == "job.sh"


def test_warnings_are_listed_once_script_first() -> None:
    script = SCRIPT + "#SBATCH --account=x\n#SBATCH --export=NOPE\n"
    _, warnings = build_submission(script, parse_directives(script),
                                   SubmitOptions(script="x.sh"), cwd="/", environ={})
    assert warnings[0].startswith("line 2: --account=x ignored")
    assert warnings[1] == "--export=NOPE: NOPE is not set here, so it is not exported"
    _, again = build_submission(script, parse_directives(script),
                                SubmitOptions(script="x.sh", export="NOPE,NOPE"),
                                cwd="/", environ={})
    assert again.count("--export=NOPE: NOPE is not set here, so it is not exported") == 1


@pytest.mark.parametrize(("text", "export"), [
    ("ALL", Export(mode="ALL")),
    ("NONE", Export(mode="NONE")),
    ("all,A=1,B", Export(mode="ALL", names=("B",), values=(("A", "1"),))),
    ("A=x=y,B=", Export(values=(("A", "x=y"), ("B", "")))),
    ("A,,A", Export(names=("A",))),
])
def test_parse_export(text: str, export: Export) -> None:
    assert parse_export(text) == export


def test_job_environment() -> None:
    env, warnings = job_environment(Export(names=("HOME", "GONE"), values=(("X", "1"),)),
                                    ("X=2",), ENVIRON)
    assert env == {"HOME": "/home/alice", "X": "2"}
    assert warnings == ["--export=GONE: GONE is not set here, so it is not exported"]


def test_wrap_script_is_what_sbatch_makes() -> None:
    assert wrap_script("echo hi; hostname") == "#!/bin/sh\necho hi; hostname\n"
    assert parse_directives(wrap_script("echo hi")) == Directives()


# --- the commands, on a fake gateway ----------------------------------------------------------
@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient()
    monkeypatch.setattr(cli_main, "client", lambda: c)
    monkeypatch.setattr(jobs, "client", lambda: c)
    monkeypatch.setattr(cli_main, "ARRAY_POLL_S", 0.0)
    return c


def run(*args: str, input_: str | None = None) -> Any:
    return CliRunner().invoke(cli_main.cli, list(args), input=input_)


def test_submit_an_array(fake: FakeClient, tmp_path: Any) -> None:
    script = tmp_path / "sweep.sh"
    script.write_text("#!/bin/bash\n#SBATCH --array=0-999%8\n#SBATCH --account=x\necho $X\n")
    fake.submit_answer = {"id": 4012, "array_job_id": 4012, "array_task_id": 0,
                          "array": {"id": 4012, "spec": "0-999%8", "throttle": 8,
                                    "count": 1000, "states": {"PENDING": 1000}}}
    result = run("submit", str(script), "-d", "afterok:3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Submitted batch job 4012 (array of 1000, at most 8 at once)\n"
    assert result.stderr.count("warning: line 3: --account=x ignored") == 1
    body, test_only = fake.submitted[0]
    assert (body["array"], body["dependency"], test_only) == ("0-999%8", "afterok:3", False)


def test_submit_a_directive_error_submits_nothing(fake: FakeClient, tmp_path: Any) -> None:
    script = tmp_path / "gpu.sh"
    script.write_text("#!/bin/bash\n\n#SBATCH --gres=gpu:1\n")
    result = run("submit", str(script))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: line 3: --gres=gpu:1 cannot be honoured: this "
                                    "cluster has no GPUs")
    assert result.stderr.rstrip().endswith("(nothing submitted)")
    assert fake.submitted == []


def test_submit_test_only(fake: FakeClient) -> None:
    fake.submit_answer = {"test_only": True, "array_count": 10,
                          "job": {"id": None, "name": "wrap", "cpus": 1, "state": "PENDING"}}
    result = run("submit", "--test-only", "--wrap", "true", "-a", "0-9%2")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("would submit: job 'wrap', array of 10, at most 2 at once, 1 CPU, "
                             "no time limit; nothing submitted\n")
    body, test_only = fake.submitted[0]
    assert test_only and body["script"] == "#!/bin/sh\ntrue\n"


def test_submit_test_only_rejected(fake: FakeClient) -> None:
    fake.submit_error = ApiError(400, "invalid_dependency", "job 99 does not exist")
    result = run("submit", "--test-only", "--wrap", "true", "-d", "afterok:99")
    assert result.exit_code == 1
    assert result.stderr == "error: job 99 does not exist (nothing submitted)\n"


def test_submit_needs_a_script_or_wrap(fake: FakeClient, tmp_path: Any) -> None:
    assert run("submit").exit_code == 2
    script = tmp_path / "x.sh"
    script.write_text("true\n")
    assert run("submit", str(script), "--wrap", "true").exit_code == 2
    assert run("submit", "--wrap", "true", "--time", "banana").stderr.startswith(
        "error: --time=banana: expected minutes")


def test_submit_wait_for_an_array(fake: FakeClient) -> None:
    summary: dict[str, Any] = {"id": 40, "count": 4, "throttle": None,
                               "states": {"PENDING": 4}}
    first: dict[str, Any] = {"id": 40, "name": "sweep", "array_job_id": 40,
                             "array_task_id": 0, "array": summary}
    fake.submit_answer = first
    fake.answers[("GET", "/api/v1/jobs/40")] = [
        {**first, "array": {**summary, "states": {"RUNNING": 2, "COMPLETED": 2}}},
        {**first, "array": {**summary, "states": {"COMPLETED": 3, "FAILED": 1}}},
    ]
    fake.answers[("GET", "/api/v1/jobs")] = {
        "items": [job(42, "FAILED", array=40, index=2)], "next_cursor": None}
    result = run("submit", "--wait", "--wrap", "true", "-a", "0-3")
    assert result.exit_code == 1, result.output
    assert "Submitted batch job 40 (array of 4)" in result.stderr
    assert result.stderr.rstrip().endswith("job 40: 3 COMPLETED, 1 FAILED (40_2)")
    query = fake.calls[-1][3]
    assert (query["array_job_id"], query["limit"]) == (40, 1)
    assert set(query["state"].split(",")) == {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                              "OUT_OF_MEMORY"}


def test_cancel_an_array_and_an_element(fake: FakeClient) -> None:
    fake.answers[("DELETE", "/api/v1/jobs/12")] = {"array_job_id": 12, "count": 98,
                                                   "stopping": 2}
    fake.answers[("DELETE", "/api/v1/jobs/13_4")] = job(17, "CANCELLED", array=13, index=4)
    fake.answers[("DELETE", "/api/v1/jobs/14")] = ApiError(404, "not_found",
                                                           "job 14 does not exist")
    result = run("cancel", "12", "13_4", "14")
    assert result.exit_code == 1
    assert result.stdout == "array 12: 98 elements cancelled, 2 stopping\njob 13_4 cancelled\n"
    assert result.stderr == "error: job 14 does not exist\n"


def test_hold_an_element(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/jobs/12_3/hold")] = job(15, array=12, index=3)
    assert run("hold", "12_3").stdout == "job 12_3 held\n"


def test_queue_folds_and_unfolds(fake: FakeClient) -> None:
    items = [*array_jobs(4012, range(37, 45), reason="JobArrayTaskLimit", throttle=8),
             job(4011, "RUNNING", array=4012, index=36, throttle=8, worker_id="n7")]
    fake.answers[("GET", "/api/v1/jobs")] = {"items": items, "next_cursor": None}
    folded = run("queue").stdout.splitlines()
    assert folded[0].split()[:3] == ["JOBID", "PARTITION", "NAME"]
    assert folded[1].split() == ["4012_[37-44%8]", "default", "sweep", "alice", "PD", "0:00",
                                 "1", "(JobArrayTaskLimit)"]
    assert folded[2].split()[0] == "4012_36"
    assert len(folded) == 3
    unfolded = run("queue", "--array").stdout.splitlines()
    assert [line.split()[0] for line in unfolded[1:]] == [f"4012_{i}" for i in range(44, 35, -1)]
