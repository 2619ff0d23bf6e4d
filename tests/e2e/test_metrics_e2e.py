"""Metrics of a running system (processes, as `scns up` starts them): the executor's job
histograms count the jobs it ran, the scheduler's passes are timed, and the gateway's cluster
gauges settle to an idle cluster once the jobs are done."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from shared.localinfra import free_port
from shared.states import PendingReason
from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state

T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def health_metrics(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return parse(resp.read().decode())


def gateway_metrics(r: Running) -> Samples:
    text = r.client.call("GET", "/metrics")
    assert isinstance(text, str)
    return parse(text)


def poll(read: Callable[[], T], done: Callable[[T], bool], *, timeout: float, what: str) -> T:
    """Read until `done` says the value has settled; the last value read otherwise fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = read()
        except OSError:  # not listening yet
            got = None
        if got is not None and done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not settle within {timeout}s; last: {got!r}")
        time.sleep(0.1)


def test_histograms_count_the_jobs_run_and_the_gauges_settle(start_system: Factory) -> None:
    executor, scheduler = free_port(), free_port()
    r = start_system(cpus=2, health_ports={"executor": executor, "scheduler": scheduler})
    poll(lambda: health_metrics(executor), lambda _: True, timeout=60, what="executor /metrics")

    jobs = [submit(r, "echo done\n") for _ in range(3)] + [submit(r, "exit 3\n")]
    ended = [wait_state(r, j["id"], TERMINAL, 60) for j in jobs]
    assert [j["state"] for j in ended] == ["COMPLETED"] * 3 + ["FAILED"], (
        [(j["state"], j["reason"], j["exit_code"]) for j in ended],
        [ln for ln in r.system.child("executor").log.read_text().splitlines()
         if "INFO" not in ln][-30:])

    # observed just after each end is recorded: wait for the counts to catch up
    m = poll(lambda: health_metrics(executor),
             lambda m: value(m, "scns_job_run_seconds_count", state="COMPLETED") >= 3
             and value(m, "scns_job_run_seconds_count", state="FAILED") >= 1,
             timeout=30, what="the executor's run-time histogram")
    assert value(m, "scns_job_queue_wait_seconds_count") >= 4  # observed at each start
    assert value(m, "scns_job_queue_wait_seconds_sum") > 0
    assert value(m, "scns_job_run_seconds_bucket", state="COMPLETED", le="+Inf") >= 3
    assert value(m, "scns_executor_jobs_finished_total", state="COMPLETED") >= 3

    poll(lambda: health_metrics(scheduler),
         lambda m: value(m, "scns_scheduler_pass_seconds_count") > 0,
         timeout=30, what="the scheduler's pass histogram")

    # the gateway: an idle cluster of one ready worker, every job-finished event handled
    def idle(m: Samples) -> bool:
        finished = [(labels, v) for (n, labels), v in m.items()
                    if n in ("scns_stream_group_lag", "scns_stream_group_pending")
                    and dict(labels)["stream"] == "job-finished"]
        return (set(by(m, "scns_jobs_pending", "reason").values()) == {0}
                and value(m, "scns_jobs_running") == 0 and value(m, "scns_jobs_allocated") == 0
                and by(m, "scns_workers", "state") == {"ready": 1, "draining": 0, "down": 0}
                and bool(finished) and all(v == 0 for _, v in finished))

    m = poll(lambda: gateway_metrics(r), idle, timeout=60, what="the gateway's gauges")
    assert set(by(m, "scns_jobs_pending", "reason")) >= set(map(str, PendingReason))
    assert by(m, "scns_jobs_pending_cpus", "reason") == by(m, "scns_jobs_pending", "reason")
    assert value(m, "scns_running_cpus") == 0
