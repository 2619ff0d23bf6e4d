"""deploy/sql/roles.sql, run for real: a schema owner role, a runtime role and their database,
under names unique to one test (roles are cluster-wide), dropped afterwards."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.procs import ROOT

ROLES_SQL = ROOT / "deploy" / "sql" / "roles.sql"


@dataclass(frozen=True)
class Roles:
    owner: str
    app: str
    database: str
    owner_url: str
    app_url: str


def _url(admin_url: str, user: str, database: str) -> str:
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path="/" + database))


def statements(sql: str) -> list[str]:
    """The file's statements, comments dropped (CREATE DATABASE must run on its own)."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


@contextlib.asynccontextmanager
async def provisioned(admin_url: str) -> AsyncIterator[Roles]:
    tag = uuid.uuid4().hex[:8]
    names = {"scns_owner": f"scns_owner_{tag}", "scns_app": f"scns_app_{tag}",
             "scns": f"scns_{tag}"}
    sql = re.sub(r"\b(scns_owner|scns_app|scns)\b", lambda m: names[m[1]],
                 ROLES_SQL.read_text("utf-8"))
    before, connect, after = sql.partition(f"\\connect {names['scns']}")
    assert connect, "roles.sql connects to the new database for its schema steps"
    roles = Roles(owner=names["scns_owner"], app=names["scns_app"], database=names["scns"],
                  owner_url=_url(admin_url, names["scns_owner"], names["scns"]),
                  app_url=_url(admin_url, names["scns_app"], names["scns"]))
    admin = await asyncpg.connect(admin_url)
    try:
        for statement in statements(before):
            await admin.execute(statement)
        inside = await asyncpg.connect(_url(admin_url, urlsplit(admin_url).username
                                            or "postgres", roles.database))
        try:
            for statement in statements(after):
                await inside.execute(statement)
        finally:
            await inside.close()
        yield roles
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{roles.database}" WITH (FORCE)')
        for role in (roles.app, roles.owner):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
