"""Least privilege in PostgreSQL: deploy/sql/roles.sql makes a schema owner and a runtime role;
`scns migrate --grant-to` (as the owner) migrates and grants; the runtime role then reads and
writes rows but can change nothing in the schema, and a service that would have to migrate
with it is refused with a message instead of retrying forever."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.errors import PreflightError
from shared.preflight import check_postgres, needed_version, wait_for_schema
from tests.infra import Infra
from tests.procs import ROOT
from tests.roles import provisioned


def scns_migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "migrate", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


async def test_the_runtime_role_reads_and_writes_rows_and_changes_no_schema(
        infra: Infra) -> None:
    async with provisioned(infra.postgres_url) as roles:
        # before any migration, the runtime role cannot make the schema: a clear refusal
        with pytest.raises(PreflightError, match=f"the database role '{roles.app}' may not "
                                                 "change the schema"):
            await migrate(roles.app_url)

        done = scns_migrate({"SCNS_MIGRATE_DATABASE_URL": roles.owner_url,
                             "SCNS_DATABASE_URL": roles.app_url}, "--grant-to", roles.app)
        assert done.returncode == 0, done.stderr
        assert f"schema at version {needed_version()}" in done.stdout, done.stdout
        assert f"granted role {roles.app} the runtime privileges" in done.stdout
        again = scns_migrate({"SCNS_MIGRATE_DATABASE_URL": roles.owner_url,
                              "SCNS_APP_ROLE": roles.app})
        assert again.returncode == 0 and "schema is up to date" in again.stdout, again

        app = await asyncpg.connect(roles.app_url)
        try:
            # rows: yes (an identity column's sequence included)
            job_id = await app.fetchval(
                "INSERT INTO jobs (script, cpus) VALUES ('true', 1) RETURNING id")
            await app.execute("UPDATE jobs SET priority = 5 WHERE id = $1", job_id)
            assert await app.fetchval("SELECT count(*) FROM jobs") == 1
            await app.execute("DELETE FROM jobs WHERE id = $1", job_id)
            # the schema: no
            for ddl in ("CREATE TABLE intruder (x int)", "DROP TABLE jobs",
                        "TRUNCATE jobs", "ALTER TABLE jobs ADD COLUMN x int",
                        "CREATE INDEX intruder ON jobs (name)",
                        "DELETE FROM scns_schema_version WHERE false OR true"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await app.execute(ddl)
        finally:
            await app.close()

        # a service with the runtime role: migrating an up-to-date schema changes nothing,
        # waiting for it returns at once, and the start-up checks pass
        assert await migrate(roles.app_url) == []
        pool = await create_pool(roles.app_url, max_size=2, application_name="scns-test")
        try:
            assert await wait_for_schema(pool) == needed_version()
            await check_postgres(pool, roles.app_url)
        finally:
            await pool.close()


async def test_grant_to_an_unknown_role_is_refused(infra: Infra) -> None:
    async with provisioned(infra.postgres_url) as roles:
        done = scns_migrate({"SCNS_MIGRATE_DATABASE_URL": roles.owner_url},
                            "--grant-to", "nobody_has_this_role")
        assert done.returncode == 1
        assert "no database role 'nobody_has_this_role'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_migrate_waits_then_says_postgresql_did_not_answer() -> None:
    from shared.localinfra import free_port

    done = scns_migrate({"SCNS_MIGRATE_DATABASE_URL":
                         f"postgresql://postgres@127.0.0.1:{free_port()}/scns"}, "--wait", "1")
    assert done.returncode == 1, done
    assert "PostgreSQL did not answer within 1s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
