"""`scns tail` against a running system, as a user runs it: a process of its own, reading the
streams directly (SCNS_REDIS_URL set, as an operator) and through the gateway (a token only)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state
from tests.procs import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def env_of(r: Running, *, direct: bool) -> dict[str, str]:
    env = {**r.env, "NO_COLOR": "1"}
    if not direct:  # a user: the gateway's address and a token, nothing else
        for name in ("SCNS_REDIS_URL", "SCNS_DATABASE_URL"):
            env.pop(name, None)
    return env


def scns(r: Running, *args: str, direct: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                          env=env_of(r, direct=direct), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


def tail_json(r: Running, *args: str, direct: bool = True) -> list[dict[str, Any]]:
    lines = scns(r, "tail", "-o", "json", *args, direct=direct).stdout.splitlines()
    return [orjson.loads(line) for line in lines]  # every line is one JSON object


def key(e: dict[str, Any]) -> str:
    return f"{e['stream_id']}:{e['type']}"


def order(e: dict[str, Any]) -> tuple[int, int, str]:
    ms, _, seq = e["stream_id"].partition("-")
    return int(ms), int(seq), e["type"]


@pytest.fixture
def system(start_system: Factory, tmp_path: Path) -> Iterator[tuple[Running, dict[str, int]]]:
    r = start_system()
    ok = submit(r, "echo fine", name="ok")["id"]
    bad = submit(r, "exit 3", name="bad")["id"]
    held = submit(r, "true", name="held", hold=True)["id"]
    for job in (ok, bad):
        wait_state(r, job, TERMINAL)
    return r, {"ok": ok, "bad": bad, "held": held}


# job events only come from this test's jobs; a worker's may come again (a heartbeat late
# under load: it leaves and joins again), so the exact comparisons read the job streams
JOBS = ("job-submitted", "job-allocated", "job-started", "job-finished", "job-updated",
        "job-requeued")


def test_tail_reads_from_an_id_a_time_the_last_n_with_each_filter(
        system: tuple[Running, dict[str, int]]) -> None:
    r, jobs = system
    kinds = {e["type"] for e in tail_json(r, "--from", "0")}
    assert {"worker-joined", "job-submitted", "job-allocated", "job-started",
            "job-finished"} <= kinds
    every = tail_json(r, *JOBS, "--from", "0")
    assert len(every) == 9  # 3 submitted, 2 allocated, 2 started, 2 finished
    assert every == sorted(every, key=order)
    assert len({key(e) for e in every}) == len(every)
    assert all(e["job"]["user"] for e in every), \
        "with SCNS_DATABASE_URL, job events say whose job"

    # from an id (after it), in both spellings; from a time (that millisecond on); the last N
    k = len(every) // 2
    assert tail_json(r, *JOBS, "--from", key(every[k])) == every[k + 1:]
    bare = every[k]["stream_id"]
    assert [key(e) for e in tail_json(r, *JOBS, "--from", bare)] == [
        key(e) for e in every if order(e)[:2] > order(every[k])[:2]]
    ms = order(every[k])[0]
    iso = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    assert tail_json(r, *JOBS, "--from", iso) == [e for e in every if order(e)[0] >= ms]
    assert tail_json(r, *JOBS, "--from", "-3") == every[-3:]
    assert tail_json(r, *JOBS) == every[-10:]  # no --from: the last 10, like tail(1)

    # filters: types, a job, a worker, a field
    finished = tail_json(r, "job-finished", "--from", "0")
    assert {e["job_id"] for e in finished} == {jobs["ok"], jobs["bad"]}
    assert {e["type"] for e in finished} == {"job-finished"}
    bad = tail_json(r, "--from", "0", "--job", str(jobs["bad"]))
    story = [e["type"] for e in bad]  # job-allocated may follow job-started (dispatch first)
    assert story[0] == "job-submitted" and story[-1] == "job-finished", story
    assert sorted(story[1:3]) == ["job-allocated", "job-started"], story
    assert {e["job_id"] for e in bad} == {jobs["bad"]}
    worker = next(e["worker_id"] for e in every if e["type"] == "job-started")
    on_worker = tail_json(r, *JOBS, "--from", "0", "--worker", worker)
    assert on_worker and all(e["worker_id"] == worker for e in on_worker)
    assert on_worker == [e for e in every if e.get("worker_id") == worker]
    assert any(e["type"] == "worker-joined" and e["worker_id"] == worker
               for e in tail_json(r, "worker-joined", "--from", "0", "--worker", worker))
    failed = tail_json(r, "--from", "0", "--where", "state=FAILED")
    assert [(e["type"], e["job_id"], e["exit_code"]) for e in failed] == [
        ("job-finished", jobs["bad"], 3)]
    assert tail_json(r, "--from", "0", "--where", "job.name=ok", "job-finished")[0][
        "job_id"] == jobs["ok"]

    # through the gateway (a token only): the same events an admin may see, the same filters
    assert tail_json(r, *JOBS, "--from", "0", direct=False) == every
    assert tail_json(r, *JOBS, "--from", key(every[k]), direct=False) == every[k + 1:]
    assert tail_json(r, *JOBS, "--from", "-3", direct=False) == every[-3:]
    assert tail_json(r, "--from", "0", "--job", str(jobs["bad"]), direct=False) == bad
    assert tail_json(r, "--from", "0", "--where", "state=FAILED", direct=False) == failed

    # text: one readable line per event
    text = scns(r, "tail", "--from", "0", "job-finished").stdout.splitlines()
    assert len(text) == 2
    line = next(t for t in text if "FAILED" in t)
    assert "job-finished" in line and "exit=3" in line and f"{jobs['bad']}" in line


# `scns` as a terminal's foreground job runs it: with Ctrl-C (SIGINT) at its default. A
# background job, as CI runs the suite, inherits SIGINT ignored; exec keeps a default one.
AS_IN_A_TERMINAL = [sys.executable, "-c", (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'services.cli', *sys.argv[1:]])")]


def read_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.parametrize("direct", [True, False], ids=["redis", "gateway"])
def test_tail_follows_new_events(start_system: Factory, direct: bool) -> None:
    r = start_system()
    since = datetime.now(UTC).isoformat()  # not `now`: the process may start after the first
    with subprocess.Popen([*AS_IN_A_TERMINAL, "tail", "-f", "-o", "json", "--from", since,
                           "job-finished"], cwd=ROOT, env=env_of(r, direct=direct),
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            lines = read_lines(proc)
            for i in range(3):  # the 2nd and 3rd end while tail is running: they are live
                job = submit(r, f"exit {i}")["id"]
                e = orjson.loads(lines.get(timeout=60))  # within a minute of its end, at most
                assert (e["type"], e["job_id"], e["exit_code"]) == ("job-finished", job, i)
            assert proc.poll() is None, "-f keeps going"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("scns tail -f did not stop on Ctrl-C") from None
    assert proc.returncode == 0  # Ctrl-C is how -f ends: not an error


def groups(r: Running) -> dict[str, Any]:
    client = redis.Redis.from_url(r.settings.redis_url, decode_responses=True)
    try:
        out = {}
        for name in ("job-submitted", "job-finished", "job-allocated"):
            stream = f"{r.settings.key_prefix}stream:{name}"
            if client.exists(stream):
                out[name] = (client.xinfo_groups(stream), client.xpending(stream, "scheduler")
                             if name != "job-allocated" else None)
        return out
    finally:
        client.close()


def caught_up(r: Running, group: str, names: tuple[str, ...], timeout: float = 30) -> None:
    """Wait until `group` reads each of these streams and has read all of it (a job that has
    completed does not say so: the scheduler's pass may place it before its consumer has made
    its groups)."""
    client = redis.Redis.from_url(r.settings.redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done = True
            for name in names:
                stream = f"{r.settings.key_prefix}stream:{name}"
                info: Any = client.xinfo_groups(stream) if client.exists(stream) else []
                mine = [g for g in info if g["name"] == group]
                done = done and bool(mine) and mine[0]["lag"] == 0 and mine[0]["pending"] == 0
            if done:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} has not caught up with {names}")
            time.sleep(0.05)
    finally:
        client.close()


def test_tail_lag_shows_a_group_that_lags_and_tailing_changes_no_group(
        start_system: Factory) -> None:
    r = start_system()
    wait_state(r, submit(r, "true")["id"], {"COMPLETED"})
    caught_up(r, "scheduler", ("job-submitted", "job-finished"))
    scheduler = r.system.child("scheduler").proc
    os.kill(scheduler.pid, signal.SIGSTOP)  # the scheduler stops reading: job-submitted lags
    try:
        jobs = [submit(r, "true")["id"] for _ in range(3)]
        before = groups(r)
        rows = [orjson.loads(x) for x in scns(r, "tail", "--lag", "-o", "json").stdout.split()]
        row = next(x for x in rows if x["name"] == "job-submitted" and x["group"] == "scheduler")
        # a read the scheduler had blocked in may take the first entry (pending, not lag)
        assert row["lag"] >= 2 and row["lag"] + row["pending"] >= 3
        table = scns(r, "tail", "--lag").stdout
        line = next(t for t in table.splitlines() if "job-submitted" in t and "scheduler" in t)
        assert "slow consumer" in line
        via_gateway = scns(r, "tail", "--lag", direct=False).stdout  # an admin's token
        assert any("job-submitted" in t and "slow consumer" in t for t in via_gateway.splitlines())
        # reading every stream, both ways, leaves every group exactly as it was
        tail_json(r, "--from", "0")
        tail_json(r, "--from", "0", direct=False)
        tail_json(r, "--from", "-5", "--job", str(jobs[0]))
        assert groups(r) == before
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)
