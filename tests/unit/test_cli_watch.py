"""Where a person waits on the CLI, without a server and without sleeping: `scns queue --watch`
(refreshes, a state change between two, a gateway that stops answering and comes back, Ctrl-C),
the spinner of `scns logs -f` while its job waits to start, and the bar of `scns cancel`."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.text import Text

from services.cli import main as cli_main
from services.cli import watch
from services.cli.arrays import QueueRow, queue_rows
from services.cli.client import ApiError, Unreachable
from tests.fakes import FakeClient

TIME = re.compile(r"^\d\d:\d\d:\d\d  ")


def job(id_: int, state: str = "PENDING", *, reason: str | None = None, **extra: Any
        ) -> dict[str, Any]:
    return {"id": id_, "name": "train", "user": "alice", "state": state, "attempt": 1,
            "reason": reason if reason is not None else
            ("Priority" if state == "PENDING" else None),
            "cpus": 2, "partition": "default", "worker_id": None, "array_job_id": None,
            "array_task_id": None, "array_throttle": None, "started_at": None,
            "finished_at": None, **extra}


def element(array: int, index: int, state: str = "PENDING", **extra: Any) -> dict[str, Any]:
    return job(array + index, state, array_job_id=array, array_task_id=index, **extra)


def down(_query: Any) -> Any:
    raise Unreachable("cannot reach the gateway at http://127.0.0.1:8080: refused")


class Gateway:
    """What the fake gateway lists now; `pause` (the watch's sleep) runs the next step of a
    script between two refreshes, and records how long the watch asked to sleep."""

    def __init__(self, fake: FakeClient, items: list[dict[str, Any]],
                 workers: list[dict[str, Any]] | None = None) -> None:
        self.items = items
        self.down = False
        self.slept: list[float] = []
        self.steps: list[Callable[[], None]] = []
        fake.answers[("GET", "/api/v1/jobs")] = self.jobs
        fake.answers[("GET", "/api/v1/workers")] = lambda _q: {
            "items": workers if workers is not None else [{"id": "n1", "state": "ready"}],
            "next_cursor": None}

    def jobs(self, query: Mapping[str, Any]) -> dict[str, Any]:
        if self.down:
            down(query)
        return {"items": self.items, "next_cursor": None}

    def pause(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.steps:
            self.steps.pop(0)()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient()
    monkeypatch.setattr(cli_main, "client", lambda: c)
    monkeypatch.setattr(watch, "pause", _no_real_sleep)
    return c


def _no_real_sleep(seconds: float) -> None:
    raise AssertionError(f"a test slept for real ({seconds}s)")


@pytest.fixture
def gateway(fake: FakeClient, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = Gateway(fake, [job(7, reason="Resources")])
    monkeypatch.setattr(watch, "pause", g.pause)
    return g


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_main.cli, list(args))


def frames(output: str) -> list[list[str]]:
    """The views a piped --watch printed: blocks of lines between blank lines."""
    return [block.splitlines() for block in output.strip("\n").split("\n\n")]


def cells(lines: list[str], label: str) -> list[str]:
    return next(line.split() for line in lines if line.split()[:1] == [label])


# --- queue --watch, piped ---------------------------------------------------------------------
def test_watch_refreshes_and_shows_a_state_change(gateway: Gateway) -> None:
    def starts() -> None:
        gateway.items = [job(7, "RUNNING", worker_id="n1", started_at="2026-11-23T11:59:19Z")]

    gateway.steps = [starts]
    result = run("queue", "--watch", "--count", "3")
    assert result.exit_code == 0, result.output
    shown = frames(result.stdout)
    assert len(shown) == 3
    for view in shown:
        assert TIME.match(view[0]), view[0]  # the time of the refresh starts the header
        assert view[1].split()[:2] == ["JOBID", "PARTITION"]
    assert shown[0][0].endswith("  1 pending (1 Resources) · 1 worker")
    assert cells(shown[0], "7")[4:] == ["PD", "0:00", "2", "(Resources)"]
    assert shown[1][0].endswith("  1 running · 1 worker")
    assert cells(shown[1], "7")[4] == "R"
    assert cells(shown[1], "7")[-1] == "n1"
    assert cells(shown[2], "7")[4] == "R"
    assert gateway.slept == [2.0, 2.0]  # between refreshes only: none after the last


def test_watch_interval_and_the_same_filters_as_queue(fake: FakeClient, gateway: Gateway
                                                      ) -> None:
    result = run("queue", "-w", "--interval", "0.5", "--count", "2", "-u", "alice", "-n",
                 "train", "-t", "R")
    assert result.exit_code == 0, result.output
    assert gateway.slept == [0.5]
    listings = [q for method, path, _, q in fake.calls if path == "/api/v1/jobs"]
    assert len(listings) == 2  # one listing per refresh: -t R alone has no pending part
    assert all((q["user"], q["name"], q["state"]) == ("alice", "train", "RUNNING")
               for q in listings)


def test_watch_folds_arrays_as_queue_does(gateway: Gateway) -> None:
    gateway.items = [*(element(40, i, reason="JobArrayTaskLimit", array_throttle=2)
                       for i in range(9, 1, -1)),
                     element(40, 1, "RUNNING", worker_id="n1", array_throttle=2),
                     element(40, 0, "RUNNING", worker_id="n1", array_throttle=2)]
    result = run("queue", "--watch", "--count", "1")
    assert result.exit_code == 0, result.output
    [view] = frames(result.stdout)
    assert view[0].endswith("  2 running · 8 pending (8 JobArrayTaskLimit) · 1 worker")
    assert [line.split()[0] for line in view[2:]] == ["40_[2-9%2]", "40_1", "40_0"]
    unfolded = frames(run("queue", "--watch", "--count", "1", "--array").stdout)[0]
    assert len(unfolded) == 2 + 10


def test_watch_says_the_gateway_is_unreachable_and_recovers(gateway: Gateway) -> None:
    def stop() -> None:
        gateway.down = True

    def come_back() -> None:
        gateway.down = False
        gateway.items = [job(7, "COMPLETED", exit_code=0)]

    gateway.steps = [stop, come_back]
    result = run("queue", "--watch", "--count", "3", "--all")
    assert result.exit_code == 0, result.output
    first, notice, back = frames(result.stdout)
    assert cells(first, "7")[4] == "PENDING"  # --all: states in full
    at = first[0][:8]
    assert notice == [f"gateway unreachable, retrying… (last answer at {at})"]
    assert back[0].endswith("  1 completed · 1 worker")
    assert cells(back, "7")[4] == "COMPLETED"


def test_watch_waits_for_a_gateway_that_never_answered(gateway: Gateway) -> None:
    gateway.down = True

    def up() -> None:
        gateway.down = False

    gateway.steps = [up]
    result = run("queue", "--watch", "--count", "2")
    assert result.exit_code == 0, result.output
    notice, view = frames(result.stdout)
    assert notice == ["gateway unreachable, retrying…"]
    assert cells(view, "7")[4] == "PD"


def test_watch_rides_out_a_gateway_restarting(fake: FakeClient, gateway: Gateway) -> None:
    answers = [ApiError(503, "unavailable", "PostgreSQL is away"), gateway.jobs]
    fake.answers[("GET", "/api/v1/jobs")] = answers
    result = run("queue", "--watch", "--count", "2")
    assert result.exit_code == 0, result.output
    assert frames(result.stdout)[0] == ["gateway unreachable, retrying…"]


def test_watch_ends_on_an_error_that_is_an_answer(fake: FakeClient, gateway: Gateway) -> None:
    fake.answers[("GET", "/api/v1/jobs")] = ApiError(401, "unauthorized", "bad token")
    result = run("queue", "--watch", "--count", "3")
    assert isinstance(result.exception, ApiError)
    assert gateway.slept == []


def test_watch_without_the_workers_it_may_not_see(fake: FakeClient, gateway: Gateway) -> None:
    fake.answers[("GET", "/api/v1/workers")] = ApiError(403, "forbidden", "admins only")
    result = run("queue", "--watch", "--count", "1")
    assert result.exit_code == 0, result.output
    assert frames(result.stdout)[0][0].endswith("  1 pending (1 Resources)")


def test_watch_of_an_empty_queue(gateway: Gateway) -> None:
    gateway.items = []
    result = run("queue", "--watch", "--count", "1")
    assert result.exit_code == 0, result.output
    assert frames(result.stdout)[0][0].endswith("  no jobs · 1 worker")
    assert frames(result.stdout)[0][1] == "no jobs"


def test_ctrl_c_ends_the_watch_with_exit_0(gateway: Gateway) -> None:
    def ctrl_c() -> None:
        raise KeyboardInterrupt

    gateway.steps = [ctrl_c]
    result = run("queue", "--watch")  # no --count: it runs until interrupted
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert len(frames(result.stdout)) == 1
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_ctrl_c_during_a_request_ends_the_watch_with_exit_0(fake: FakeClient,
                                                             gateway: Gateway) -> None:
    def interrupted(_query: Any) -> Any:
        raise KeyboardInterrupt

    fake.answers[("GET", "/api/v1/jobs")] = [gateway.jobs, interrupted]
    result = run("queue", "--watch")
    assert result.exit_code == 0, result.output
    assert len(frames(result.stdout)) == 1


@pytest.mark.parametrize(("args", "words"), [
    (["--watch", "--json"], "--watch shows a table; it does not combine with --json"),
    (["-w", "--json"], "does not combine with --json"),
    (["--interval", "5"], "--interval only applies with --watch"),
    (["--watch", "--interval", "0.1"], "0.1 is not in the range x>=0.5"),
])
def test_watch_usage_errors(fake: FakeClient, args: list[str], words: str) -> None:
    result = run("queue", *args)
    assert result.exit_code == 2
    assert words in result.output
    assert fake.calls == []


def test_queue_without_watch_is_unchanged(gateway: Gateway) -> None:
    result = run("queue")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "JOBID"  # no header line, no time
    assert cells(lines, "7")[4] == "PD"
    assert gateway.slept == []


# --- the watch loop on a terminal -------------------------------------------------------------
def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=100, color_system=None), buffer


def test_on_a_terminal_the_view_is_redrawn_in_place() -> None:
    console, buffer = terminal()
    views = iter([watch.View("1 pending", Text("job seven waits")),
                  watch.View("1 running", Text("job seven runs"))])
    slept: list[float] = []
    watch.run(lambda: next(views), console=console, interval=2, count=2, sleep=slept.append,
              clock=lambda: datetime(2026, 11, 23, 13, 2, 11, tzinfo=UTC))
    text = buffer.getvalue()
    assert "13:02:11  1 pending   every 2s · Ctrl-C quits" in text
    assert "job seven waits" in text
    assert "job seven runs" in text
    assert "\x1b[" in text  # cursor movements: redrawn, not appended
    assert slept == [2]


def test_on_a_terminal_the_notice_shows_above_the_last_view() -> None:
    console, buffer = terminal()

    def render() -> watch.View:
        if calls:
            raise Unreachable("gone")
        calls.append(1)
        return watch.View("1 pending", Text("job seven waits"))

    calls: list[int] = []
    watch.run(render, console=console, interval=1, count=2, sleep=lambda _: None,
              clock=lambda: datetime(2026, 11, 23, 13, 2, 11, tzinfo=UTC))
    last = buffer.getvalue().rsplit("13:02:11  1 pending", 1)[1]
    assert "gateway unreachable, retrying… (last answer at 13:02:11)" in last
    assert "job seven waits" in last


# --- the counts line (pure) -------------------------------------------------------------------
@pytest.mark.parametrize(("states", "reasons", "partial", "workers", "line"), [
    ({"RUNNING": 3, "PENDING": 12}, {"Resources": 8, "Held": 4}, (), {"ready": 2},
     "3 running · 12 pending (8 Resources, 4 Held) · 2 workers"),
    ({"PENDING": 2, "ALLOCATED": 1, "RUNNING": 1}, {"Held": 1, "Dependency": 1}, (),
     {"ready": 1}, "1 running · 1 allocated · 2 pending (1 Dependency, 1 Held) · 1 worker"),
    ({"COMPLETED": 5, "OUT_OF_MEMORY": 1, "RUNNING": 1}, {}, (), None,
     "1 running · 5 completed · 1 out of memory"),
    ({"PENDING": 1000, "RUNNING": 8}, {"JobArrayTaskLimit": 1000}, {"PENDING"},
     {"ready": 3, "draining": 1, "down": 2},
     "8 running · 1000+ pending (1000 JobArrayTaskLimit) · 4 workers (1 draining, 2 down)"),
    ({}, {}, (), {"down": 1}, "no jobs · no workers (1 down)"),
    ({"RUNNING": 0}, {}, (), {}, "no jobs · no workers"),
])
def test_counts_line(states: dict[str, int], reasons: dict[str, int], partial: tuple[str, ...],
                     workers: dict[str, int] | None, line: str) -> None:
    assert watch.counts_line(states, reasons, partial=partial, workers=workers) == line


def test_row_counts_count_a_folds_elements() -> None:
    rows = queue_rows([*(element(40, i, reason="Held") for i in range(5, 0, -1)),
                       element(40, 0, "RUNNING"), job(3)])
    assert [r.label for r in rows] == ["40_[1-5]", "40_0", "3"]
    states, reasons = watch.row_counts(rows)
    assert (dict(states), dict(reasons)) == ({"PENDING": 6, "RUNNING": 1},
                                             {"Held": 5, "Priority": 1})
    bare = QueueRow(label="9", job={**job(9), "reason": None})
    assert watch.row_counts([bare])[1] == {"None": 1}


def test_worker_states() -> None:
    assert watch.worker_states([{"state": "ready"}, {"state": "ready"}, {"state": "down"},
                                {}]) == {"ready": 2, "down": 2}


# --- logs -f: waiting for the job to start ----------------------------------------------------
@pytest.fixture
def stderr_terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    console, buffer = terminal()
    monkeypatch.setattr(cli_main, "err", console)
    return buffer


def test_logs_follow_shows_a_pending_job_until_it_starts(
        fake: FakeClient, stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(watch, "pause", slept.append)
    fake.answers[("GET", "/api/v1/jobs/12")] = [
        job(12, reason="Resources"), job(12, reason="Priority"), ApiError(503, "x", "away"),
        job(12, "RUNNING", worker_id="n1"), job(12, "RUNNING", worker_id="n1"),
        job(12, "COMPLETED", worker_id="n1")]
    fake.answers[("STREAM", "/api/v1/jobs/12/log")] = log_answer(b"hello\n", b"world\n")
    result = run("logs", "-f", "12")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello\nworld\n"
    shown = stderr_terminal.getvalue()
    assert "job 12: PENDING (Resources), waiting for it to start" in shown
    assert "job 12: PENDING (Priority), waiting for it to start" in shown
    assert "job 12: gateway unreachable, retrying…" in shown
    assert len(slept) == 3
    # then: which attempt, its follow, has it ended (yes), anything written since (no)
    assert [c[0] for c in fake.calls] == ["GET"] * 4 + ["GET", "STREAM", "GET", "STREAM"]
    assert [c[3] for c in fake.calls if c[0] == "STREAM"] == [
        {"stream": "stdout", "attempt": 1, "follow": "1", "offset": 0},
        {"stream": "stdout", "attempt": 1, "offset": 12}]


def test_logs_follow_of_a_running_job_has_no_spinner(fake: FakeClient,
                                                     stderr_terminal: io.StringIO) -> None:
    fake.answers[("GET", "/api/v1/jobs/12")] = [job(12, "RUNNING", worker_id="n1"),
                                                job(12, "RUNNING", worker_id="n1"),
                                                job(12, "FAILED", worker_id="n1")]
    fake.answers[("STREAM", "/api/v1/jobs/12/log")] = log_answer(b"out\n")
    result = run("logs", "-f", "-e", "12")
    assert result.exit_code == 0, result.output
    assert result.stdout == "out\n"
    assert "waiting" not in stderr_terminal.getvalue()
    assert next(c[3] for c in fake.calls if c[0] == "STREAM") == {
        "stream": "stderr", "attempt": 1, "follow": "1", "offset": 0}


def test_logs_follow_piped_shows_nothing_but_the_output(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/jobs/12")] = [job(12, "RUNNING", worker_id="n1"),
                                                job(12, "COMPLETED", worker_id="n1")]
    fake.answers[("STREAM", "/api/v1/jobs/12/log")] = log_answer(b"out\n")
    result = run("logs", "-f", "12")
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("out\n", "")
    # no spinner: no polling before the follow, only which attempt and, after it, its end
    assert [c[0] for c in fake.calls] == ["GET", "STREAM", "GET", "STREAM"]


def log_answer(*chunks: bytes) -> Callable[[Mapping[str, Any]], bytes]:
    """A log's answer: followed, these chunks; read at an offset, what lies past it."""
    text = b"".join(chunks)

    def answer(query: Mapping[str, Any]) -> Any:
        return chunks if query.get("follow") == "1" else text[int(query["offset"]):]

    return answer


# --- cancel: a bar while the requests go out --------------------------------------------------
def cancel_answers(fake: FakeClient) -> None:
    fake.answers[("DELETE", "/api/v1/jobs/12")] = {"array_job_id": 12, "count": 98,
                                                   "stopping": 2}
    fake.answers[("DELETE", "/api/v1/jobs/13_4")] = element(13, 4, "CANCELLED")
    fake.answers[("DELETE", "/api/v1/jobs/20")] = job(20, "RUNNING")
    fake.answers[("DELETE", "/api/v1/jobs/14")] = ApiError(404, "not_found",
                                                           "job 14 does not exist")


def test_cancel_many_shows_a_bar_on_a_terminal(fake: FakeClient,
                                               stderr_terminal: io.StringIO) -> None:
    cancel_answers(fake)
    result = run("cancel", "12", "13_4", "20", "14")
    assert result.exit_code == 1
    assert result.stdout == ("array 12: 98 elements cancelled, 2 stopping\njob 13_4 cancelled\n"
                             "job 20 cancelling\n")
    shown = stderr_terminal.getvalue()
    assert "cancelling" in shown and "4/4" in shown
    assert "error: job 14 does not exist" in shown + result.stderr


def test_cancel_piped_prints_no_bar(fake: FakeClient) -> None:
    cancel_answers(fake)
    result = run("cancel", "12", "20", "14")
    assert result.exit_code == 1
    assert result.stdout == "array 12: 98 elements cancelled, 2 stopping\njob 20 cancelling\n"
    assert result.stderr == "error: job 14 does not exist\n"


def test_steps_spins_for_one_and_draws_nothing_off_a_terminal() -> None:
    console, buffer = terminal()
    with watch.steps(1, "cancelling 12", console=console, redirect_stdout=False) as step:
        step()
    assert "cancelling 12" in buffer.getvalue()
    assert "1/1" not in buffer.getvalue()
    piped = Console(file=io.StringIO())
    with watch.steps(5, "cancelling", console=piped, redirect_stdout=False) as step:
        step()
    assert piped.file.getvalue() == ""  # type: ignore[attr-defined]
