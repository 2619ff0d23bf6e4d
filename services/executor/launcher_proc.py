"""The job launcher: one small process per executor, the parent of every job it starts.

Run as `python -I -S launcher_proc.py scns-launcher` (isolated, no site: nothing but the standard
library, a few MB) by launcher.py, with a socket to its executor on fd 3. Why it exists: a job
started through the shell wrapper (process.py) cost five execs as root, cgroup entry included
(`sh`, `setpriv`, `sh`, `setsid`, then the job's `bash`): 4.4 ms of CPU per job, against
0.9 ms for its `bash` alone. Here the job is one fork of this process and one exec:

* the child makes its own session (`setsid`: its own process group, which the executor
  signals, apart from this process), enters the job's cgroups while still root (its own pid
  into `<base>/<leaf>/cgroup.procs`), raises its `oom_score_adj` to 1000, then drops to the
  job's account (`setgroups`, `setgid`, `setuid`: the job's environment reaches no root stage
  at all: it is given to the exec only);
* as the job's user it changes to the working directory and opens the output files, exactly
  as the wrapper did (a failure writes `scns: <why>` to `$jobdir/stderr`, records status 1 and
  reports `error workdir|stdout|stderr|cgroup`), then execs the interpreter;
* this process writes `pid` ("<job> <launcher>") once the exec has happened (a close-on-exec
  pipe says so) and `status` when the job ends, both with O_EXCL|O_NOFOLLOW (what the job put
  there first is left alone, never written through), and reports both on the socket with the
  job's wait4 usage.

It ignores SIGTERM, SIGINT and SIGHUP and lives in a session of its own, so it outlives its
executor: a restarted executor adopts the jobs it left (their `status` still gets written) and
this process exits once its last job has ended. Protocol: JSON lines; requests `{"id", "jobdir",
"argv", "env", "uid", "gid", "groups", "cgroups", "stdout", "stderr", "workdir"}`, answers
`{"id", "pid"}`, `{"id", "error"}`, `{"id", "exit", "ru": [user s, system s, peak RSS kB],
"hwm": this process's own peak RSS kB}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from typing import Any, NoReturn

MARK = "scns-launcher"
IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WRITE_ONCE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class Started:
    __slots__ = ("errbuf", "errfd", "error", "jobdir", "pid", "rid", "status", "usage")

    def __init__(self, rid: int, jobdir: str, pid: int, errfd: int) -> None:
        self.rid, self.jobdir, self.pid, self.errfd = rid, jobdir, pid, errfd
        self.errbuf = b""
        self.error: str | None = None
        self.status: int | None = None
        self.usage: list[float] = [0.0, 0.0, 0.0]


def write_once(jobdir: str, name: str, text: str) -> None:
    try:
        fd = os.open(os.path.join(jobdir, name), WRITE_ONCE, 0o644)
    except OSError:
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def own_peak_kb() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# --- in the child, between fork and exec -----------------------------------------------------
def note(jobdir: str, why: str) -> None:
    """Why the job could not start, where its user reads it (`$jobdir/stderr`)."""
    try:
        fd = os.open(os.path.join(jobdir, "stderr"), APPEND | os.O_NOFOLLOW, 0o600)
        os.write(fd, f"scns: {why}\n".encode(errors="replace"))
        os.close(fd)
    except OSError:
        pass


def fail(errw: int, jobdir: str, kind: str, why: str) -> NoReturn:
    note(jobdir, why)
    os.write(errw, kind.encode())
    os._exit(1)


def become_job(req: dict[str, Any], errw: int, ignored: tuple[int, ...]) -> NoReturn:
    """Never returns: execs the job, or exits reporting why it could not."""
    jobdir: str = req["jobdir"]
    reset_signals(ignored)
    os.setsid()
    enter_cgroups(req["cgroups"], jobdir, errw)
    with contextlib.suppress(OSError):
        write_to("/proc/self/oom_score_adj", b"1000\n")
    if req["uid"] is not None:
        drop(req, jobdir)
    change_directory(req["workdir"], req["env"], jobdir, errw)
    out, err = open_outputs(req["stdout"], req["stderr"], jobdir, errw)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    argv: list[str] = req["argv"]
    try:
        os.execvpe(argv[0], argv, req["env"])
    except OSError as e:
        os.write(2, f"scns: {argv[0]}: {e.strerror}\n".encode(errors="replace"))
    os._exit(127)


def write_to(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def reset_signals(ignored: tuple[int, ...]) -> None:
    """What this process ignores, the job must not inherit (an exec resets caught signals to
    their default itself, but not ignored ones)."""
    signal.set_wakeup_fd(-1)
    for s in ignored:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def enter_cgroups(bases: list[str], jobdir: str, errw: int) -> None:
    leaf = os.path.basename(jobdir)
    for base in bases:
        where = os.path.join(base, leaf)
        if not os.path.isdir(where):
            continue  # a memory-only base has a leaf only for a job with a memory limit
        try:
            write_to(os.path.join(where, "cgroup.procs"), str(os.getpid()).encode())
        except OSError as e:
            write_once(jobdir, "status", "1\n")
            fail(errw, jobdir, "cgroup", f"cannot enter the job's cgroup {where}: {e.strerror}")


def drop(req: dict[str, Any], jobdir: str) -> None:
    """To the job's account, groups first (setpriv's order)."""
    try:
        os.setgroups(req["groups"])
        os.setgid(req["gid"])
        os.setuid(req["uid"])
    except OSError as e:
        note(jobdir, f"cannot switch to the job's account: {e.strerror}")
        os._exit(126)
    if os.geteuid() == 0 or os.getegid() == 0:
        os._exit(126)


def change_directory(workdir: str, env: dict[str, str], jobdir: str, errw: int) -> None:
    """An explicit one (--chdir) must exist; else the submit directory, else the job's."""
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as e:
            fail(errw, jobdir, "workdir",
                 f"cannot change to the working directory (--chdir) {workdir}: {e.strerror}")
        return
    for where in (env.get("SCNS_SUBMIT_DIR") or jobdir, jobdir):
        try:
            os.chdir(where)
            return
        except OSError:
            continue
    os._exit(120)


def open_outputs(stdout: str, stderr: str, jobdir: str, errw: int) -> tuple[int, int]:
    """Opened as the job's user, for appending (sbatch's --open-mode=append)."""
    out = stdout or os.path.join(jobdir, "stdout")
    try:
        out_fd = os.open(out, APPEND, 0o666)
    except OSError as e:
        fail(errw, jobdir, "stdout",
             f"cannot open the output file (--output) {out}: {e.strerror}")
    if stderr == "1":
        return out_fd, out_fd
    err = stderr or os.path.join(jobdir, "stderr")
    try:
        return out_fd, os.open(err, APPEND, 0o666)
    except OSError as e:
        fail(errw, jobdir, "stderr", f"cannot open the error file (--error) {err}: {e.strerror}")


# --- the launcher's loop ---------------------------------------------------------------------
class Launcher:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.connected = True
        self.inbuf = b""
        self.by_pid: dict[int, Started] = {}
        self.by_errfd: dict[int, Started] = {}
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for s in IGNORED:
            signal.signal(s, signal.SIG_IGN)
        # ignored here (ours, Python's own SIGPIPE and SIGXFSZ, what we inherited): reset in
        # each job before its exec
        self.ignored = tuple(s for s in signal.valid_signals()
                             if signal.getsignal(s) is signal.SIG_IGN)
        self.sel.register(sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)

    def send(self, msg: dict[str, Any]) -> None:
        if not self.connected:
            return
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self.disconnect()

    def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.sel.unregister(self.sock)
            self.sock.close()

    def run(self) -> None:
        while self.connected or self.by_pid:
            for key, _ in self.sel.select():
                if key.fileobj is self.sock:
                    self.read_requests()
                elif key.fileobj == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                else:
                    self.read_errpipe(self.by_errfd[key.fd])
            self.reap()

    def read_requests(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.disconnect()  # the executor is gone: finish the jobs, then exit
            return
        self.inbuf += data
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line:
                self.launch(json.loads(line))

    def launch(self, req: dict[str, Any]) -> None:
        errr, errw = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as e:
            os.close(errr)
            os.close(errw)
            self.send({"id": req["id"], "exit": -1, "why": f"fork failed: {e}"})
            return
        if pid == 0:
            try:
                os.close(errr)
                become_job(req, errw, self.ignored)
            finally:
                os._exit(127)
        os.close(errw)
        os.set_blocking(errr, False)
        started = Started(req["id"], req["jobdir"], pid, errr)
        self.by_pid[pid] = started
        self.by_errfd[errr] = started
        self.sel.register(errr, selectors.EVENT_READ)

    def read_errpipe(self, s: Started) -> None:
        try:
            data = os.read(s.errfd, 256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            s.errbuf += data
            return
        # EOF: the child has exec'd (or exited, having said why in errbuf)
        self.sel.unregister(s.errfd)
        del self.by_errfd[s.errfd]
        os.close(s.errfd)
        s.errfd = -1
        if s.errbuf:
            s.error = s.errbuf.decode(errors="replace")
            self.send({"id": s.rid, "error": s.error})
        else:
            write_once(s.jobdir, "pid", f"{s.pid} {os.getpid()}\n")
            self.send({"id": s.rid, "pid": s.pid})
        self.finish(s)

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            s = self.by_pid.get(pid)
            if s is None:
                continue
            s.status = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                        else 128 + os.WTERMSIG(status))
            s.usage = [ru.ru_utime, ru.ru_stime, float(ru.ru_maxrss)]
            self.finish(s)

    def finish(self, s: Started) -> None:
        """Once the exec is settled and the job reaped: its status, recorded and reported."""
        if s.errfd != -1 or s.status is None:
            return
        del self.by_pid[s.pid]
        status = 1 if s.error else s.status
        write_once(s.jobdir, "status", f"{status}\n")
        self.send({"id": s.rid, "exit": status, "ru": s.usage, "hwm": own_peak_kb()})


def main() -> int:
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)
    Launcher(sock).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
