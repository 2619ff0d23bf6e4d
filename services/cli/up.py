"""`scns up`: the whole system on one machine, like `nomad agent -dev`.

Starts an embedded Redis and PostgreSQL under the data directory (unless SCNS_REDIS_URL /
SCNS_DATABASE_URL point at real ones), migrates, then runs registry, scheduler, reconciler,
executor(s) and gateway as child processes. Ctrl-C (or SIGTERM) stops them in order (gateway
first, registry last, so workers deregister cleanly), then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from services.cli.client import ADMIN_TOKEN_FILE
from shared.db.migrate import migrate
from shared.db.pool import connect
from shared.db.tokens import USER_NAME, TokenStore
from shared.errors import InfraError
from shared.localinfra import Server, port_open, start_postgres, start_redis
from shared.settings import Settings
from shared.states import WorkerState

T = TypeVar("T")
ORDER_STOP = ("gateway", "scheduler", "reconciler", "executor", "registry")


@dataclass(slots=True)
class Child:
    name: str
    module: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path


def _pg_dir(data_dir: Path) -> Path:
    """PostgreSQL refuses root and then runs as `postgres`, which must reach its directory."""
    wanted = data_dir / "postgres"
    if os.geteuid() != 0:
        return wanted
    for p in [wanted.parent, *wanted.parent.parents]:
        if p.exists() and not os.stat(p).st_mode & 0o001:
            # one directory per data dir, so two `scns up` never share a database
            tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / f"scns-root-{tag}" / "postgres"
    return wanted


async def ensure_admin_token(db_url: str, path: Path) -> str:
    """The local user's admin token: the one in `path` while it is still valid, else a new
    one written there (mode 0600, owner only)."""
    old = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        old = path.read_text("utf-8").strip()  # noqa: ASYNC240 - start-up, before any service
    conn = await connect(db_url, application_name="scns-up")
    try:
        store = TokenStore(conn)
        if old:
            row = await store.find(old)
            if row is not None and row.problem is None and row.role == "admin":
                os.chmod(path, 0o600)
                return old
        user = _local_user()
        _, token = await store.create(user, "admin", created_by="scns up")
    finally:
        await conn.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def _local_user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "admin"
    return name if USER_NAME.match(name) else "admin"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from code that already runs inside an event loop (tests, bench)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _ensure_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


class System:
    def __init__(self, settings: Settings, env: Mapping[str, str], *, workers: int,
                 cpus: int | None, echo: bool = True,
                 health_ports: Mapping[str, int] | None = None,
                 labels: Sequence[Mapping[str, str]] | None = None,
                 child_env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.settings = settings
        # child name -> extra variables applied last when it is started, and again on each
        # restart (tests: a child's own SCNS_REDIS_URL through a proxy, its clock skew)
        self.child_env = {name: dict(extra) for name, extra in (child_env or {}).items()}
        self.labels = list(labels or [])  # executor i's labels (else SCNS_WORKER_LABELS)
        # each child's own /healthz and /metrics port: given, or SCNS_HEALTH_PORT, +1, +2, ...
        # in start order (one port cannot serve several processes); none when both are unset
        self.health_ports = dict(health_ports or {})
        self.env = dict(env)
        self.token_path = settings.data_dir / ADMIN_TOKEN_FILE
        self.admin_token = ""
        self.workers = workers
        self.cpus = cpus
        self.echo = echo
        self.servers: list[Server] = []
        self.children: list[Child] = []
        self.logs = settings.data_dir / "logs"
        self.redis_url = ""
        self.db_url = ""

    def say(self, text: str) -> None:
        if self.echo:
            click.echo(text, err=True)

    def start(self) -> str:
        problems = self.settings.problems()
        if problems:  # each child would refuse them: say so once, before starting any
            raise InfraError("invalid configuration:\n  " + "\n  ".join(problems))
        data = self.settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if port_open(self.settings.gateway_port, "127.0.0.1"):
            raise InfraError(f"port {self.settings.gateway_port} is in use (another `scns up`?)"
                             "; set SCNS_GATEWAY_PORT to another port")
        redis_url = self.env.get("SCNS_REDIS_URL")
        if not redis_url:
            server = start_redis(data / "redis", persist=True)
            self.servers.append(server)
            redis_url = server.url
            self.say(f"  redis       {redis_url}  (local server, data in {data / 'redis'})")
        db_url = self.env.get("SCNS_DATABASE_URL")
        if not db_url:
            pg = start_postgres(_pg_dir(data))
            self.servers.append(pg)
            db_url = _run(_ensure_database(pg.url, "scns"))
            self.say(f"  postgresql  {db_url}  (local server, data in {_pg_dir(data)})")
        _run(migrate(db_url))
        self.redis_url, self.db_url = redis_url, db_url
        self.admin_token = _run(ensure_admin_token(db_url, self.token_path))
        self.say(f"  admin token {self.token_path}  (mode 0600; the CLI reads it when "
                 "SCNS_TOKEN is unset)")
        base = {**self.settings.as_env(), "SCNS_REDIS_URL": redis_url,
                "SCNS_DATABASE_URL": db_url, "SCNS_LOG_FORMAT": "text"}
        self._spawn("registry", "services.registry", base)
        self._spawn("scheduler", "services.scheduler", base)
        self._spawn("reconciler", "services.reconciler", base)
        for i in range(1, self.workers + 1):
            wid = self.settings.worker_id if self.workers == 1 else \
                f"{self.settings.worker_id}-{i}"
            extra = {"SCNS_WORKER_ID": wid, "SCNS_DATA_DIR": str(data / "workers" / wid)}
            if self.cpus:
                extra["SCNS_WORKER_CPUS"] = str(self.cpus)
            if i <= len(self.labels):
                extra["SCNS_WORKER_LABELS"] = ",".join(
                    f"{k}={v}" for k, v in sorted(self.labels[i - 1].items()))
            self._spawn(f"executor-{wid}" if self.workers > 1 else "executor",
                        "services.executor", {**base, **extra})
        self._spawn("gateway", "services.gateway", base)
        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"
        self._wait_ready(url)
        ports = {n: p for n, p in self.health_ports.items() if p}
        if ports:
            self.say("  metrics     " + ", ".join(f"{n} :{p}" for n, p in ports.items())
                     + f", gateway {url}/metrics")
        return url

    def _health_port(self, name: str) -> int:
        if name in self.health_ports or not self.settings.health_port:
            return self.health_ports.get(name, 0)
        port = self.settings.health_port + len(self.children)
        self.health_ports[name] = port
        return port

    def _spawn(self, name: str, module: str, env: Mapping[str, str]) -> Child:
        if name != "gateway":  # the gateway serves its health and metrics on its API port
            env = {**env, "SCNS_HEALTH_PORT": str(self._health_port(name))}
        env = {**env, **self.child_env.get(name, {})}
        log = self.logs / f"{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        child = Child(name=name, module=module, env=dict(env), proc=proc, log=log)
        self.children.append(child)
        return child

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one service (tests and the chaos driver); it stays down until restart()."""
        c = self.child(name)
        if c.proc.poll() is None:
            c.proc.send_signal(sig)
            c.proc.wait(60)

    def restart(self, name: str, **env: str) -> Child:
        """Start a service again (after kill()), with optional extra variables."""
        c = self.child(name)
        if c.proc.poll() is None:
            raise InfraError(f"{name} is still running")
        self.children.remove(c)
        return self._spawn(name, c.module, {**c.env, **env})

    def _wait_ready(self, url: str, timeout: float = 60.0) -> None:
        import orjson

        deadline = time.monotonic() + timeout
        with self._waiting() as status:
            while time.monotonic() < deadline:
                self.check_children()
                req = urllib.request.Request(url + "/api/v1/workers", headers={
                    "Authorization": f"Bearer {self.admin_token}"})
                ready = 0
                with contextlib.suppress(OSError, ValueError):
                    with urllib.request.urlopen(req, timeout=2) as r:
                        items = orjson.loads(r.read())["items"]
                    ready = sum(1 for w in items if w["state"] == WorkerState.READY)
                    if ready >= self.workers:
                        return
                status(f"waiting for the services: {ready} of {self.workers} worker(s) ready")
                time.sleep(0.2)
        raise InfraError(f"the system did not become ready within {timeout:g}s; "
                         f"see the logs in {self.logs}")

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[Callable[[str], None]]:
        """A spinner on a terminal's stderr while the services come up (nothing when piped)."""
        if not (self.echo and sys.stderr.isatty()):
            yield lambda _: None
            return
        from rich.console import Console

        with Console(stderr=True).status("waiting for the services") as spinner:
            yield spinner.update

    def check_children(self) -> None:
        for c in self.children:
            code = c.proc.poll()
            if code is not None:
                tail = "\n".join(c.log.read_text(errors="replace").splitlines()[-15:])
                raise InfraError(f"{c.name} exited with code {code}; its log ({c.log}) ends:\n"
                                 f"{tail}")

    def stop(self) -> None:
        for group in ORDER_STOP:
            mine = [c for c in self.children if c.name.startswith(group)]
            for c in mine:
                if c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGTERM)
            for c in mine:
                try:
                    c.proc.wait(self.settings.drain_grace_s + self.settings.kill_grace_s + 15)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
        for server in reversed(self.servers):
            server.stop()


@contextlib.contextmanager
def running(system: System) -> Iterator[str]:
    try:
        yield system.start()
    finally:
        system.stop()


def run_up(workers: int, cpus: int | None) -> int:
    from shared import runtime

    runtime.make_undumpable()  # it holds the URLs and the admin token, like its children
    settings = Settings.from_env()
    system = System(settings, os.environ, workers=workers, cpus=cpus)
    stop = False
    started = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stop
        stop = True
        if not started:
            raise KeyboardInterrupt

    # SIGINT explicitly too: a shell starts background commands with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo("starting SCNS Conductor ...", err=True)
    try:
        url = system.start()
        started = True
        click.echo(f"\nSCNS Conductor is up: {url}\n"
                   f"  dashboard {url}/  (sign in with the admin token)\n"
                   f"  logs in {system.logs}\n\n"
                   f"  admin token in {system.token_path}\n\n"
                   "In another shell, try:\n"
                   f"  export SCNS_URL={url}\n"
                   f"  export SCNS_TOKEN=$(cat {system.token_path})\n"
                   "  scns submit --wait examples/hello.sh\n\n"
                   "Press Ctrl-C to stop.", err=True)
        while not stop:
            system.check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except InfraError as e:
        click.echo(f"error: {e}", err=True)
        system.stop()
        return 1
    click.echo("\nstopping ...", err=True)
    system.stop()
    click.echo("stopped.", err=True)
    return 0
