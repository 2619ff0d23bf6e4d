"""A worker cut off from Redis and PostgreSQL while its job runs: the cluster declares it lost
and runs the job again elsewhere, and the two attempts never overlap, as the jobs themselves
see it (a per-job lock held for the script's life). The same run with the executor's fence
switched off (a test-only failpoint) shows the overlap: the check has teeth.

Deterministic by construction: one job, one partition held until the second attempt has
started, and timings whose margin (shared/fencing.py) is far above an executor's loop lag."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.cli.client import Client
from services.cli.up import System
from shared.fencing import Fence
from shared.localinfra import free_port
from shared.settings import Settings
from tests.chaos.proxy import FaultProxy

FLOCK = shutil.which("flock")
pytestmark = pytest.mark.skipif(FLOCK is None, reason="needs flock(1) (util-linux)")

# TERM 2.5 s after the last renewal, every process dead by 4.5 s, lost at 8 s
TIMINGS: dict[str, Any] = {"heartbeat_s": 0.5, "worker_ttl_s": 2.0, "node_fail_grace_s": 6.0,
                           "kill_grace_s": 1.0, "fence_margin_s": 3.5, "reconcile_s": 1.0,
                           "repair_grace_s": 1.0, "registry_sweep_s": 0.2,
                           "drain_grace_s": 1.0}


def wait(what: str, ready: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def partitioned(settings: Settings, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[tuple[System, Client, dict[str, Any]]]:
    fence: bool = request.param
    s = dataclasses.replace(settings, gateway_port=free_port(), data_dir=tmp_path / "sys",
                            worker_id="part", **TIMINGS)
    assert not Fence.of(s).problems()
    redis_port = urlsplit(s.redis_url).port
    db = urlsplit(s.database_url)
    assert redis_port is not None and db.port is not None
    proxies: dict[str, dict[str, FaultProxy]] = {}
    child_env: dict[str, dict[str, str]] = {}
    for wid in ("part-1", "part-2"):
        redis = FaultProxy(redis_port, name=f"{wid}-redis").start()
        pg = FaultProxy(db.port, name=f"{wid}-pg").start()
        proxies[wid] = {"redis": redis, "pg": pg}
        child_env[f"executor-{wid}"] = {
            "SCNS_REDIS_URL": f"redis://127.0.0.1:{redis.port}{urlsplit(s.redis_url).path}",
            "SCNS_DATABASE_URL": db._replace(netloc=f"{db.username}@127.0.0.1:{pg.port}")
            .geturl(),
            **({} if fence else {"SCNS_FAILPOINT": "executor:no-fence"})}
    env = {**os.environ, "SCNS_REDIS_URL": s.redis_url, "SCNS_DATABASE_URL": s.database_url}
    system = System(s, env, workers=2, cpus=1, echo=False, child_env=child_env)
    try:
        url = system.start()
        yield system, Client(url, token=system.admin_token), proxies
    finally:
        for pair in proxies.values():
            for proxy in pair.values():
                proxy.heal("reset")
        system.stop()
        for pair in proxies.values():
            for proxy in pair.values():
                proxy.stop()


@pytest.mark.parametrize("partitioned", [True, False], ids=["fenced", "no-fence"],
                         indirect=True)
def test_a_partitioned_workers_job_never_overlaps_its_next_attempt(
    partitioned: tuple[System, Client, dict[str, Any]], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    fenced = request.node.callspec.id == "fenced"
    _, client, proxies = partitioned
    lock, overlaps, marks = tmp_path / "lock", tmp_path / "overlaps", tmp_path / "marks"
    for f in (lock, overlaps, marks):
        f.touch()
        os.chmod(f, 0o666)  # jobs run as nobody under a root executor
    script = (f'exec 9>>"{lock}"\n'
              f'{FLOCK} -n 9 || echo "$SCNS_ATTEMPT" >> "{overlaps}"\n'
              f'echo "start $SCNS_ATTEMPT $SCNS_WORKER_ID" >> "{marks}"\n'
              "trap '' TERM\n"  # the fence has to SIGKILL it
              "while :; do sleep 0.2; done\n")
    job = client.call("POST", "/api/v1/jobs", {"script": script, "requeue": True})

    def attempt_running(n: int) -> dict[str, Any] | None:
        j: dict[str, Any] = client.call("GET", f"/api/v1/jobs/{job['id']}")
        return j if j["state"] == "RUNNING" and j["attempt"] == n else None

    first = wait("attempt 1 to run", lambda: attempt_running(1))
    wait("attempt 1's script", lambda: "start 1 " in marks.read_text())
    for proxy in proxies[first["worker_id"]].values():
        proxy.cut()  # its executor can reach neither Redis nor PostgreSQL
    second = wait("the cluster to run attempt 2", lambda: attempt_running(2))
    assert second["worker_id"] != first["worker_id"]
    wait("attempt 2's script", lambda: "start 2 " in marks.read_text())
    if fenced:
        # attempt 1 was SIGKILLed (it ignores SIGTERM) before attempt 2 could be placed
        assert overlaps.read_text() == ""
    else:
        assert overlaps.read_text().split() == ["2"]
    for proxy in proxies[first["worker_id"]].values():
        proxy.heal("resume")
    client.call("DELETE", f"/api/v1/jobs/{job['id']}")
    wait("the job to end", lambda: client.call("GET", f"/api/v1/jobs/{job['id']}")["state"]
         == "CANCELLED")
    if fenced:  # the partitioned executor's own NODE_FAIL of attempt 1 bounced off the guard
        attempts = client.call("GET", f"/api/v1/jobs/{job['id']}/attempts")["items"]
        assert [a["state"] for a in attempts] == ["NODE_FAIL", "CANCELLED"]
