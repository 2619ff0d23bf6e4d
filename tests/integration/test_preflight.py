"""The start-up checks against real servers (shared/preflight.py): a Redis that evicts is
refused with a clear message and a service exits 78 without a traceback; a transaction-mode
PgBouncer in front of PostgreSQL is detected; without migrations at start a service waits for
the schema and then starts."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from shared import clock, preflight
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.errors import PreflightError
from shared.localinfra import Server, free_port, port_open, start_redis
from shared.settings import Settings
from tests.helpers import open_for_jobs
from tests.infra import Infra
from tests.procs import ROOT, Proc, start_service


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    """A Redis of this test's own: its configuration is the test's to change."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


async def test_an_evicting_redis_is_refused_with_a_clear_message(own_redis: Server) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        await preflight.check_redis(client)  # the default, noeviction: accepted
        await client.config_set("maxmemory-policy", "volatile-lru")
        with pytest.raises(PreflightError) as refused:
            await preflight.check_redis(client)
        assert "Redis maxmemory-policy is volatile-lru; SCNS needs noeviction" in str(
            refused.value)
        assert "worker leases" in str(refused.value)
    finally:
        await client.aclose()


def _wait_exit(proc: Proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.name} still running after {timeout}s:\n"
                             f"{proc.output()[-3000:]}") from None


@pytest.mark.parametrize("module", ["services.registry", "services.gateway"])
def test_a_service_on_an_evicting_redis_exits_78_without_a_traceback(
        own_redis: Server, settings: Settings, tmp_path: Path, module: str) -> None:
    asyncio.run(_set_policy(own_redis.url, "volatile-lru"))
    proc = start_service(module.rsplit(".", 1)[1], module, settings, tmp_path,
                         SCNS_REDIS_URL=own_redis.url, SCNS_LOG_FORMAT="text",
                         SCNS_GATEWAY_PORT=str(free_port()))
    try:
        assert _wait_exit(proc, 60) == preflight.EXIT_CODE
        out = proc.output()
    finally:
        proc.stop()
    assert "refusing to start: Redis maxmemory-policy is volatile-lru" in out, out
    assert "Traceback" not in out, out
    assert len([line for line in out.splitlines() if "refusing to start" in line]) == 1, out


async def _set_policy(url: str, policy: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.config_set("maxmemory-policy", policy)
    finally:
        await client.aclose()


# --- PgBouncer ------------------------------------------------------------------------------
def _pgbouncer(tmp_path: Path, postgres_url: str, mode: str
               ) -> tuple[subprocess.Popen[bytes], str]:
    """A PgBouncer in `mode` in front of `postgres_url`'s server; its URL."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    pg = urlsplit(postgres_url)
    port = free_port()
    work = tmp_path / f"pgbouncer-{mode}"
    work.mkdir(parents=True, exist_ok=True)
    open_for_jobs(work)  # readable and writable by the user it runs as
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={pg.hostname} port={pg.port or 5432} user={pg.username or 'postgres'}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = any\npool_mode = {mode}\nlogfile = {work / 'pgbouncer.log'}\n")
    ini.chmod(0o644)
    user: dict[str, int] = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        who = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
        user = {"user": who.pw_uid, "group": who.pw_gid}
    proc = subprocess.Popen([binary, str(ini)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **user)  # type: ignore[call-overload]
    deadline = time.monotonic() + 20
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = work / "pgbouncer.log"
            raise AssertionError("pgbouncer did not start: "
                                 + (log.read_text() if log.exists() else "no log"))
        time.sleep(0.05)
    return proc, f"postgresql://{pg.username or 'postgres'}@127.0.0.1:{port}{pg.path}"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize(("mode", "detected"), [("transaction", True), ("session", False)])
async def test_a_transaction_mode_pooler_is_detected(
        infra: Infra, database_url: str, tmp_path: Path, mode: str, detected: bool) -> None:
    bouncer, url = _pgbouncer(tmp_path, database_url, mode)
    try:
        assert await preflight.transaction_pooler(url) is detected
        assert await preflight.transaction_pooler(database_url) is False  # directly: never
        pool = await create_pool(url, max_size=1, application_name="scns-test")
        try:
            if detected:
                with pytest.raises(PreflightError, match="transaction-mode pooler"):
                    await preflight.check_postgres(pool, url)
            else:
                await preflight.check_postgres(pool, url)
        finally:
            await pool.close()
    finally:
        bouncer.terminate()
        bouncer.wait(10)


# --- the schema, when services do not migrate ------------------------------------------------
async def test_wait_for_schema_returns_once_migrated(empty_database_url: str) -> None:
    pool = await create_pool(empty_database_url, max_size=2, application_name="scns-test")
    try:
        waiting = asyncio.create_task(preflight.wait_for_schema(pool, poll_s=0.05))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await migrate(empty_database_url)
        assert await asyncio.wait_for(waiting, 10) == preflight.needed_version()
    finally:
        await pool.close()


def test_a_service_without_migrations_waits_for_the_schema_then_starts(
        settings: Settings, empty_database_url: str, tmp_path: Path) -> None:
    port = free_port()
    proc = start_service("registry", "services.registry", settings, tmp_path,
                         SCNS_DATABASE_URL=empty_database_url, SCNS_MIGRATE_ON_START="0",
                         SCNS_HEALTH_PORT=str(port), SCNS_LOG_FORMAT="text")
    try:
        deadline = time.monotonic() + 30
        while "waiting for `scns migrate`" not in proc.output():
            assert proc.popen.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        assert not port_open(port)  # not started: no health endpoint yet
        asyncio.run(_no_tables(empty_database_url))
        asyncio.run(migrate(empty_database_url))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.popen.poll() is None, proc.output()
                assert time.monotonic() < deadline, proc.output()
                time.sleep(0.1)
    finally:
        proc.stop()


async def _no_tables(url: str) -> None:
    """The waiting service did not migrate on its own."""
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('jobs')") is None
    finally:
        await conn.close()


def _scns_check(redis_url: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "check"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, "SCNS_REDIS_URL": redis_url, "SCNS_DATABASE_URL": database_url})


def test_scns_check_reports_each_datastore(own_redis: Server, database_url: str,
                                           empty_database_url: str) -> None:
    good = _scns_check(own_redis.url, database_url)
    assert good.returncode == 0, good
    assert [line.split()[:2] for line in good.stdout.splitlines()] == [
        ["ok", "redis"], ["ok", "postgresql"], ["ok", "schema"]], good.stdout
    asyncio.run(_set_policy(own_redis.url, "allkeys-lru"))
    bad = _scns_check(own_redis.url, empty_database_url)
    assert bad.returncode == 1, bad
    assert "FAIL  redis: Redis maxmemory-policy is allkeys-lru" in bad.stdout, bad.stdout
    assert "ok    postgresql" in bad.stdout
    assert f"FAIL  schema: at version 0, this build needs {preflight.needed_version()}" in \
        bad.stdout, bad.stdout
    assert "2 check(s) failed" in bad.stderr and "Traceback" not in bad.stderr


async def test_the_clock_offset_from_postgresql_is_measured_and_warned_about(
    pool: asyncpg.Pool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Same host as PostgreSQL: no offset to speak of, no warning. A clock 30 s ahead: the
    figure says so, and so does one warning line."""
    assert abs(await preflight.clock_offset(pool)) < preflight.CLOCK_WARN_S
    assert not [r for r in caplog.records if getattr(r, "event", "") == "clock-offset"]
    clock.configure(30.0)
    try:
        offset = await preflight.clock_offset(pool)
    finally:
        clock.configure(0.0)
    assert 29 < offset < 31
    assert preflight.CLOCK_OFFSET._value.get() == round(offset, 3)
    (warning,) = [r for r in caplog.records if getattr(r, "event", "") == "clock-offset"]
    assert "+30.0 s off PostgreSQL's" in warning.getMessage()
