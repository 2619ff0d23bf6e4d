"""The chaos suite's fault-injecting proxy (tests/chaos/proxy.py) against a real Redis on
loopback: it forwards; a cut makes commands (and new connections) hang unanswered; heal("reset")
breaks the connections the cut held and lets new ones work; heal("resume") delivers what was
queued during the cut, late, even from a client that gave up and closed."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.localinfra import Server, start_redis
from tests.chaos.proxy import FaultProxy


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="scns-proxy-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def proxy(upstream: Server) -> Iterator[FaultProxy]:
    port = int(upstream.url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port, name="test") as p:
        yield p


@pytest.fixture
def direct(upstream: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(upstream.url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def resp(*words: str) -> bytes:
    out = f"*{len(words)}\r\n".encode()
    for w in words:
        out += f"${len(w.encode())}\r\n{w}\r\n".encode()
    return out


def connect(proxy: FaultProxy, timeout: float = 0.5) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    s.settimeout(timeout)
    return s


def ask(s: socket.socket, *words: str) -> bytes:
    s.sendall(resp(*words))
    return s.recv(4096)


def test_forwards_both_ways(proxy: FaultProxy, direct: redis.Redis) -> None:
    client = redis.Redis(port=proxy.port, socket_timeout=2)
    try:
        assert client.set("proxy:fwd", "x" * 100_000)
        assert client.get("proxy:fwd") == b"x" * 100_000
        assert direct.get("proxy:fwd") == b"x" * 100_000
    finally:
        client.close()
    stats = proxy.stats()
    assert stats.accepted >= 1
    assert stats.bytes_up > 100_000 and stats.bytes_down > 100_000


def test_cut_makes_commands_and_new_connections_time_out(proxy: FaultProxy,
                                                         direct: redis.Redis) -> None:
    s = connect(proxy)
    assert ask(s, "PING") == b"+PONG\r\n"
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ask(s, "SET", "proxy:cut", "1")
    assert time.monotonic() - started >= 0.4
    assert direct.get("proxy:cut") is None  # not delivered
    # a new connection: the handshake completes (loopback), then nothing is answered
    fresh = connect(proxy)
    with pytest.raises(TimeoutError):
        ask(fresh, "PING")
    # a redis-py client with a timeout and no retries fails the same way
    client = redis.Redis(port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                         retry_on_timeout=False)
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    client.close()
    stats = proxy.stats()
    assert stats.cuts == 1 and stats.held >= 3 and stats.held_new >= 2
    for x in (s, fresh):
        x.close()


def test_heal_reset_breaks_old_connections_and_new_ones_work(proxy: FaultProxy,
                                                             direct: redis.Redis) -> None:
    old = connect(proxy)
    assert ask(old, "PING") == b"+PONG\r\n"
    proxy.cut()
    during = connect(proxy)  # accepted during the cut
    old.sendall(resp("SET", "proxy:reset", "stale"))  # queued, then dropped by the reset
    time.sleep(0.2)
    proxy.heal("reset")
    for s in (old, during):
        # EOF (b"") or a reset: either way the connection is gone
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        assert got == b""
        s.close()
    assert direct.get("proxy:reset") is None  # the queued command was never delivered
    new = connect(proxy)
    assert ask(new, "SET", "proxy:reset", "new") == b"+OK\r\n"
    assert direct.get("proxy:reset") == b"new"
    new.close()
    stats = proxy.stats()
    assert stats.reset >= 2


def test_heal_resume_delivers_queued_commands_late(proxy: FaultProxy,
                                                   direct: redis.Redis) -> None:
    s = connect(proxy, timeout=0.3)
    assert ask(s, "PING") == b"+PONG\r\n"
    quitter = connect(proxy)
    assert ask(quitter, "PING") == b"+PONG\r\n"
    proxy.cut()
    with pytest.raises(TimeoutError):
        ask(s, "SET", "proxy:resume", "late")
    # a client that gave up and closed its socket during the cut: what it sent still goes
    quitter.sendall(resp("SET", "proxy:quitter", "stale"))
    quitter.close()
    # a connection made during the cut: its command is delivered once the cut heals
    during = connect(proxy, timeout=3)
    during.sendall(resp("SET", "proxy:during", "1"))
    time.sleep(0.5)
    assert direct.get("proxy:resume") is None and direct.get("proxy:quitter") is None
    proxy.heal("resume")
    s.settimeout(3)
    assert s.recv(4096) == b"+OK\r\n"  # the answer to the command sent during the cut
    assert direct.get("proxy:resume") == b"late"
    assert during.recv(4096) == b"+OK\r\n"
    deadline = time.monotonic() + 3
    while direct.get("proxy:quitter") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert direct.get("proxy:quitter") == b"stale"
    assert ask(s, "GET", "proxy:during") == b"$1\r\n1\r\n"
    stats = proxy.stats()
    assert stats.resumed >= 3 and stats.reset == 0
    for x in (s, during):
        x.close()


def test_upstream_gone_closes_the_client(upstream: Server) -> None:
    with FaultProxy(1, name="nowhere") as p:  # nothing listens on port 1
        s = connect(p, timeout=2)
        try:
            got = s.recv(10)
        except ConnectionResetError:
            got = b""
        assert got == b""
        s.close()
        assert p.stats().upstream_failed == 1


def test_system_child_env_is_applied_last_and_kept_on_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """How the chaos driver routes one child through its proxies (services/cli/up.py)."""
    import dataclasses
    import subprocess

    from services.cli.up import System
    from shared.settings import Settings

    seen: list[dict[str, str]] = []

    class Done:
        def __init__(self, args: list[str], *, env: dict[str, str], **_: object) -> None:
            seen.append(env)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Done)
    settings = dataclasses.replace(Settings(), data_dir=tmp_path, health_port=0)
    system = System(settings, {}, workers=1, cpus=None, echo=False,
                    child_env={"scheduler": {"SCNS_REDIS_URL": "redis://127.0.0.1:1/0",
                                             "SCNS_TEST_CLOCK_SKEW_S": "3"}})
    system.logs.mkdir(parents=True)
    base = {"SCNS_REDIS_URL": "redis://127.0.0.1:2/0", "SCNS_WORKER_ID": "w"}
    system._spawn("scheduler", "services.scheduler", base)
    system._spawn("registry", "services.registry", base)
    system.restart("scheduler")
    first, registry, again = seen
    assert first["SCNS_REDIS_URL"] == again["SCNS_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert first["SCNS_TEST_CLOCK_SKEW_S"] == again["SCNS_TEST_CLOCK_SKEW_S"] == "3"
    assert registry["SCNS_REDIS_URL"] == "redis://127.0.0.1:2/0"
    assert "SCNS_TEST_CLOCK_SKEW_S" not in registry or registry["SCNS_TEST_CLOCK_SKEW_S"] != "3"
