"""The executor's end of its job launcher (launcher_proc.py: why, and what it does).

Started on the first spawn, in a session of its own and with a minimal environment; started
again on the next spawn if it died (the jobs it was watching then end as their wrapper would
have on dying: the status file, else "the job wrapper died"). `Spawned` is the same record the
shell wrapper gives (process.py), so the supervisor does not know which started a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
import psutil

from services.executor.environment import DEFAULT_PATH
from services.executor.privilege import Account
from services.executor.process import SAME_AS_STDOUT, SETUP_ERRORS, Launch, Spawned

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("launcher_proc.py")
MARK = "scns-launcher"  # its argv[1]: how a restarted executor recognises one (is_launcher)


def is_launcher(pid: int | None) -> bool:
    """Is `pid` a live launcher of this machine's executors (which will record the status of
    the job whose pid file names it)? The pid comes from a file the job can write: it must be
    a launcher, running as this executor's user, to be believed."""
    if pid is None or pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        return (p.status() != psutil.STATUS_ZOMBIE and p.uids().real == os.geteuid()
                and MARK in p.cmdline()[-1:])
    except psutil.Error:
        return False


class Launcher:
    def __init__(self, *, python: str = sys.executable, log_path: Path | None = None) -> None:
        self.python = python
        self.log_path = log_path
        self.pid = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, Spawned] = {}
        self._next = 0
        self._starting = asyncio.Lock()

    async def _ensure(self) -> asyncio.StreamWriter:
        async with self._starting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            ours, theirs = socket.socketpair()
            out = str(self.log_path) if self.log_path else os.devnull
            try:
                self.pid = os.posix_spawn(  # noqa: ASYNC221 - once per executor, ~1 ms
                    self.python, [self.python, "-I", "-S", str(SOURCE), MARK],
                    {"PATH": DEFAULT_PATH},
                    file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                  (os.POSIX_SPAWN_OPEN, 1, out,
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                                  (os.POSIX_SPAWN_DUP2, 1, 2),
                                  (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)],
                    setsid=True)
            finally:
                theirs.close()
            reader, self._writer = await asyncio.open_connection(sock=ours)
            self._reader_task = asyncio.create_task(self._read(reader, self.pid),
                                                    name="launcher-reader")
            log.info("job launcher started", extra={"event": "launcher", "pid": self.pid})
            return self._writer

    async def spawn(self, jobdir: Path, env: dict[str, str], launch: Launch, *,
                    account: Account | None, cgroups: tuple[str, ...]) -> Spawned:
        writer = await self._ensure()
        loop = asyncio.get_running_loop()
        self._next += 1
        sp = Spawned(wrapper_pid=self.pid, fd=-1, child_pid=loop.create_future(),
                     status=loop.create_future(), rusage=loop.create_future())
        self._waiting[self._next] = sp
        writer.write(orjson.dumps({
            "id": self._next, "jobdir": str(jobdir), "argv": argv(launch, jobdir), "env": env,
            "uid": account.uid if account else None, "gid": account.gid if account else None,
            "groups": list(account.groups or (account.gid,)) if account else [],
            "cgroups": list(cgroups), "stdout": launch.stdout,
            "stderr": SAME_AS_STDOUT if launch.stderr == SAME_AS_STDOUT else launch.stderr,
            "workdir": launch.workdir}) + b"\n")
        await writer.drain()
        return sp

    async def _read(self, reader: asyncio.StreamReader, pid: int) -> None:
        try:
            while line := await reader.readline():
                self._answer(orjson.loads(line))
        except (OSError, ValueError) as e:
            log.error("the job launcher's answers stopped: %s", e)
        finally:
            self._gone(pid)

    def _answer(self, msg: dict[str, Any]) -> None:
        sp = self._waiting.get(msg["id"])
        if sp is None:
            return
        if "pid" in msg and not sp.child_pid.done():
            sp.child_pid.set_result(int(msg["pid"]))
        elif "error" in msg:
            sp.error = msg["error"] if msg["error"] in SETUP_ERRORS else None
        elif "exit" in msg:
            del self._waiting[msg["id"]]
            if not sp.child_pid.done():
                sp.child_pid.set_exception(ProcessLookupError("the job never started"))
                sp.child_pid.exception()  # retrieved: nobody has to
            ru = msg.get("ru")
            sp.spawner_peak_kb = int(msg.get("hwm", 0))
            sp.rusage.set_result(None if ru is None else resource.struct_rusage(
                (ru[0], ru[1], int(ru[2]), *([0] * 13))))
            sp.status.set_result(int(msg["exit"]))

    def _gone(self, pid: int) -> None:
        """The launcher died (or was closed): what it watched ends unknown, and the next spawn
        starts a new one."""
        self._writer = None
        waiting, self._waiting = self._waiting, {}
        for sp in waiting.values():
            if not sp.child_pid.done():
                sp.child_pid.set_exception(ProcessLookupError("the job launcher died"))
                sp.child_pid.exception()
            if not sp.rusage.done():
                sp.rusage.set_result(None)
            if not sp.status.done():
                sp.status.set_result(-1)
        task = asyncio.get_running_loop().create_task(_reap(pid))
        _reapers.add(task)
        task.add_done_callback(_reapers.discard)

    async def close(self) -> None:
        """Let go: the launcher finishes watching its jobs (recording their statuses) and
        exits when the last one ends."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)


_reapers: set[asyncio.Task[None]] = set()


async def _reap(pid: int) -> None:
    """A launcher that let go of us exits when its last job ends (or has died): collect it."""
    delay = 0.01
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG
        except ChildProcessError:
            return
        if done:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def argv(launch: Launch, jobdir: Path) -> list[str]:
    """The job's command: the interpreter its #! line names, else bash (as the wrapper)."""
    script = str(jobdir / "script")
    if not launch.interpreter:
        return ["bash", "--noprofile", "--norc", "--", script]
    if not launch.interpreter_arg:
        return [launch.interpreter, script]
    return [launch.interpreter, launch.interpreter_arg, script]
