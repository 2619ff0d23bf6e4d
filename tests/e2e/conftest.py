"""A whole system (registry, scheduler, executors, gateway as processes) on the test's own Redis
prefix and database, started the way `scns up` starts it."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.client import Client
from services.cli.up import System
from shared.localinfra import free_port
from shared.settings import Settings
from tests.helpers import open_for_jobs


@dataclasses.dataclass
class Running:
    system: System
    settings: Settings
    url: str
    client: Client

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.as_env(), "SCNS_URL": self.url,
                "SCNS_TOKEN": self.system.admin_token}


Factory = Callable[..., Running]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


@pytest.fixture(autouse=True)
def _jobs_reach_tmp_path(tmp_path: Path) -> None:
    """Executors run as root here, so jobs run as nobody: they must reach the test's directory
    (their markers, output files and working directories are there)."""
    open_for_jobs(tmp_path)


def submit(r: Running, script: str, **fields: object) -> dict[str, Any]:
    job: dict[str, Any] = r.client.call("POST", "/api/v1/jobs", {"script": script, **fields})
    return job


def wait_state(r: Running, job_id: int, states: set[str], timeout: float = 30, *,
               attempt: int | None = None) -> dict[str, Any]:
    """Poll the API until the job is in one of `states` (at `attempt`, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = r.client.call("GET", f"/api/v1/jobs/{job_id}")
        if job["state"] in states and attempt in (None, job["attempt"]):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} (attempt "
                                 f"{job['attempt']}) after {timeout}s")
        time.sleep(0.05)


def allocated_cpus(r: Running, timeout: float = 10) -> int:
    """GET /resources' allocated CPUs once back to 0 (or as they are after `timeout`): a job's
    capacity is released in Redis just after its end is recorded in PostgreSQL."""
    deadline = time.monotonic() + timeout
    while True:
        cpus: int = r.client.call("GET", "/api/v1/resources")["allocated_cpus"]
        if cpus == 0 or time.monotonic() > deadline:
            return cpus
        time.sleep(0.05)


@pytest.fixture
def start_system(settings: Settings, tmp_path: Path) -> Iterator[Factory]:
    started: list[System] = []

    def start(*, workers: int = 1, cpus: int | None = None,
              health_ports: dict[str, int] | None = None,
              labels: list[dict[str, str]] | None = None, **overrides: object) -> Running:
        fast: dict[str, object] = {"heartbeat_s": 1.0, "worker_ttl_s": 5.0, "kill_grace_s": 2.0,
                                   "drain_grace_s": 5.0}
        s = dataclasses.replace(settings, gateway_port=free_port(), data_dir=tmp_path / "sys",
                                **{**fast, **overrides})  # type: ignore[arg-type]
        env = {**os.environ, "SCNS_REDIS_URL": s.redis_url, "SCNS_DATABASE_URL": s.database_url}
        system = System(s, env, workers=workers, cpus=cpus, echo=False,
                        health_ports=health_ports, labels=labels)
        started.append(system)
        url = system.start()
        return Running(system=system, settings=s, url=url,
                       client=Client(url, token=system.admin_token))

    yield start
    for system in started:
        system.stop()
