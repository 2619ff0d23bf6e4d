"""Operating a cluster (docs/operations.md), against a running system: the gateway stays ready
while PostgreSQL is down (and answers 503 for what needs it), `scns drain --wait` follows a
worker until its jobs have finished on their own, and the whole system runs as a runtime
role that may not change the schema (deploy/sql/roles.sql, `scns migrate --grant-to`)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from services.cli.client import ApiError
from shared.localinfra import Server, start_postgres
from shared.preflight import needed_version
from tests.e2e.conftest import Factory, Running, submit, wait_state
from tests.infra import Infra
from tests.procs import ROOT
from tests.roles import provisioned

SCNS = [sys.executable, "-m", "services.cli"]


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def test_the_gateway_stays_ready_with_postgresql_stopped(
        start_system: Factory, tmp_path: Path) -> None:
    pg_dir = tmp_path / "pg"
    pg: Server = start_postgres(pg_dir, durable=False)
    port = int(pg.url.rsplit(":", 1)[1].split("/")[0])
    try:
        r = start_system(database_url=pg.url)
        status, body = readyz(r.url)
        assert (status, body["ready"], body["degraded"]) == (200, True, False), body
        done = submit(r, "echo before")
        assert wait_state(r, done["id"], {"COMPLETED"})["state"] == "COMPLETED"

        pg.stop()
        # ready all along (the Service keeps it), degraded, and honest about what is missing
        status, body = until("readyz degraded", lambda: (s := readyz(r.url))[1]["degraded"]
                             and s)
        assert status == 200 and body["ready"] is True, body
        assert body["checks"] == {"redis": True, "postgresql": False}
        for _ in range(5):
            assert readyz(r.url)[0] == 200
            time.sleep(0.2)
        with pytest.raises(ApiError) as refused:
            r.client.call("GET", "/api/v1/jobs")
        assert refused.value.status == 503, refused.value
        assert r.client.call("GET", "/api/v1/resources")["total_cpus"] > 0  # Redis serves it

        pg = start_postgres(pg_dir, port=port, durable=False)
        until("readyz recovered", lambda: not readyz(r.url)[1]["degraded"])
        after = submit(r, "echo after")
        assert wait_state(r, after["id"], {"COMPLETED"}, timeout=60)["state"] == "COMPLETED"
    finally:
        pg.stop()


def test_drain_wait_follows_a_worker_until_its_jobs_have_finished(
        start_system: Factory, tmp_path: Path) -> None:
    r = start_system(cpus=2)
    marker = tmp_path / "go"
    job = submit(r, f"while [ ! -e {marker} ]; do sleep 0.1; done; echo finished", cpus=2)
    wait_state(r, job["id"], {"RUNNING"})
    worker = r.settings.worker_id
    log = tmp_path / "drain.log"
    with open(log, "wb") as out:
        drain = subprocess.Popen([*SCNS, "drain", worker, "--wait", "--timeout", "120"],
                                 cwd=ROOT, env=r.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            until("drain reports the busy worker",
                  lambda: f"worker {worker}: 2 CPUs still in use" in log.read_text())
            assert drain.poll() is None  # still waiting: the job runs on, nobody kills it
            workers = r.client.call("GET", "/api/v1/workers")["items"]
            assert [(w["state"], w["drain"]) for w in workers] == [("draining", True)]
            marker.touch()
            assert drain.wait(60) == 0, log.read_text()
        finally:
            if drain.poll() is None:
                drain.kill()
    text = log.read_text()
    assert f"worker {worker}: draining" in text, text
    assert f"worker {worker} is drained: no job runs on it" in text, text
    assert wait_state(r, job["id"], {"COMPLETED"})["state"] == "COMPLETED"
    # a drained worker takes nothing new until resumed
    held = submit(r, "echo later")
    time.sleep(1.0)
    assert r.client.call("GET", f"/api/v1/jobs/{held['id']}")["state"] == "PENDING"
    subprocess.run([*SCNS, "resume", worker], cwd=ROOT, env=r.env, check=True,
                   capture_output=True, timeout=60)
    assert wait_state(r, held["id"], {"COMPLETED"})["state"] == "COMPLETED"

    # on a worker with nothing running, --wait returns at once; an unknown worker is an error
    quick = subprocess.run([*SCNS, "drain", worker, "--wait"], cwd=ROOT, env=r.env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert quick.returncode == 0 and "is drained" in quick.stderr, quick
    unknown = subprocess.run([*SCNS, "drain", "no-such-worker", "--wait"], cwd=ROOT,
                             env=r.env, capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode != 0, unknown


def test_the_system_runs_as_a_role_that_cannot_change_the_schema(
        start_system: Factory, infra: Infra) -> None:
    async def provision_and_run() -> None:
        async with provisioned(infra.postgres_url) as roles:
            migrate = await asyncio.to_thread(
                subprocess.run, [*SCNS, "migrate", "--grant-to", roles.app], cwd=ROOT,
                env={"PATH": "/usr/bin:/bin", "SCNS_MIGRATE_DATABASE_URL": roles.owner_url},
                capture_output=True, text=True, timeout=120)
            assert migrate.returncode == 0, migrate.stderr
            r: Running = await asyncio.to_thread(
                start_system, database_url=roles.app_url, migrate_on_start=False)
            job = submit(r, "echo least privilege")
            done = await asyncio.to_thread(wait_state, r, job["id"], {"COMPLETED"})
            assert done["state"] == "COMPLETED"
            admin = await asyncpg.connect(infra.postgres_url.rsplit("/", 1)[0] + "/"
                                          + roles.database)
            try:
                owners = {row["tableowner"] for row in await admin.fetch(
                    "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
                version = await admin.fetchval("SELECT max(version) FROM scns_schema_version")
            finally:
                await admin.close()
            assert owners == {roles.owner}
            assert version == needed_version()
            r.system.stop()

    asyncio.run(provision_and_run())


def test_scale_in_lets_running_jobs_finish_then_the_executor_exits(
        start_system: Factory, tmp_path: Path) -> None:
    """What a pool's scale-in (or an unprepared pod deletion) does: SIGTERM. The executor takes
    nothing new, its running job finishes on its own (COMPLETED, not NODE_FAIL), and it exits
    as soon as that job has ended, long before its drain grace."""
    r = start_system(cpus=2, drain_grace_s=120.0)
    marker = tmp_path / "go"
    running = submit(r, f"while [ ! -e {marker} ]; do sleep 0.1; done; echo finished", cpus=1)
    wait_state(r, running["id"], {"RUNNING"})
    executor = r.system.child("executor")
    executor.proc.send_signal(signal.SIGTERM)
    until("the worker is leaving", lambda: all(
        w["state"] != "ready" for w in r.client.call("GET", "/api/v1/workers")["items"]))
    late = submit(r, "echo too late", cpus=1)  # room on the worker, but it is leaving
    time.sleep(1.0)
    assert r.client.call("GET", f"/api/v1/jobs/{late['id']}")["state"] == "PENDING"
    assert r.client.call("GET", f"/api/v1/jobs/{running['id']}")["state"] == "RUNNING"
    assert executor.proc.poll() is None
    marker.touch()
    started = time.monotonic()
    assert executor.proc.wait(30) == 0
    assert time.monotonic() - started < 30  # not the 120 s grace
    done = wait_state(r, running["id"], {"COMPLETED", "FAILED", "NODE_FAIL"})
    assert (done["state"], done["attempt"]) == ("COMPLETED", 1), done
    assert r.client.call("GET", f"/api/v1/jobs/{late['id']}")["state"] == "PENDING"
