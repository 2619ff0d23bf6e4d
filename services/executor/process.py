"""Starting and watching job processes without asyncio's subprocess machinery.

Spawning through asyncio under uvloop managed ~414 processes/s on our 2-core machine, against
~1,400/s for `os.posix_spawn`; so we posix_spawn a tiny bash wrapper and watch it through a pipe.

The wrapper is a POSIX shell script (`/bin/sh`: dash on Debian starts in a fraction of bash's
time; it falls back to bash with `set -m` where util-linux `setsid` is missing, e.g. macOS):
* changes to the job's working directory: an explicit one (`--chdir`) must exist, or the job
  fails; without one it is the submit directory when the worker has it, else the job directory;
* opens the job's output files itself, with the job's own permissions (`Launch`: `$jobdir/stdout`
  and `$jobdir/stderr`, or the files of `--output` / `--error`, stderr possibly joining stdout);
  one it cannot open fails the job before it starts, with the shell's reason in
  `$jobdir/stderr` and `error stdout|stderr|workdir` on fd 3;
* runs the job script in a session and process group of its own (`setsid`), stdin from
  /dev/null: under the interpreter its `#!` line names (`Launch.interpreter`), else `bash`;
* writes the job's PID and start time to `pid`, and, when the job ends, its status to `status`,
  so that a restarted executor can re-adopt a running job or collect one that ended while it
  was away (the wrapper lives in its own session and outlives the executor);
* reports `pid N` and `exit N` on fd 3, a pipe the executor reads: no polling, no SIGCHLD.

Signals go to the job's process group (the wrapper is not in it), so SIGKILL on a job never
kills the wrapper before it has recorded the status. The wrapper writes `pid` and `status` with
noclobber (`set -C`): the job can write its own directory, and whatever it puts there first is
left alone (and then reads as unreadable), never written through. Output files are opened for
appending (`>>`, which noclobber leaves alone): a retried or requeued attempt adds to an
`--output` file rather than erase the earlier attempt's (sbatch's `--open-mode=append`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import shutil
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.jobfiles import read_status

WRAPPER = r"""
jobdir=$6 out=${1:-$6/stdout} err=${2:-$6/stderr} wd=$3 run=$4 arg=$5
set -C
fail() {
  printf 'scns: %s\n' "$2" >>"$jobdir/stderr"
  printf '1\n' >"$jobdir/status"
  printf 'error %s\nexit 1\n' "$1" >&3
  exit 0
}
if [ -n "$wd" ]; then
  cd -- "$wd" || { cd -- "$wd" 2>>"$jobdir/stderr"
    fail workdir "cannot change to the working directory (--chdir) $wd"; }
else
  cd -- "${SCNS_SUBMIT_DIR:-$jobdir}" 2>/dev/null || cd -- "$jobdir" || exit 120
fi
command exec 4>>"$out" || { true 2>>"$jobdir/stderr" >>"$out"
  fail stdout "cannot open the output file (--output) $out"; }
if [ "$err" = 1 ]; then exec 5>&4
else command exec 5>>"$err" || { true 2>>"$jobdir/stderr" >>"$err"
  fail stderr "cannot open the error file (--error) $err"; }
fi
if [ -z "$run" ]; then set -- bash --noprofile --norc -- "$jobdir/script"
elif [ -z "$arg" ]; then set -- "$run" "$jobdir/script"
else set -- "$run" "$arg" "$jobdir/script"; fi
@LAUNCH@ "$@" </dev/null >&4 2>&5 3>&- 4>&- 5>&- &
child=$!
exec 4>&- 5>&-
printf '%s %s\n' "$child" "$$" >"$jobdir/pid"
printf 'pid %s\n' "$child" >&3
trap ':' TERM INT HUP
trap '' PIPE
wait "$child"; st=$?
while [ "$st" -gt 128 ] && kill -0 "$child" 2>/dev/null; do wait "$child"; st=$?; done
printf '%s\n' "$st" >"$jobdir/status"
printf 'exit %s\n' "$st" >&3
exit 0
"""

BASH = "/bin/bash"
SH = "/bin/sh"


def wrapper_command() -> tuple[str, str]:
    """(shell, script) of the wrapper on this machine."""
    setsid = shutil.which("setsid", path="/usr/bin:/bin")
    if setsid and os.path.exists(SH):
        return SH, WRAPPER.replace("@LAUNCH@", setsid)
    return BASH, "set -m\n" + WRAPPER.replace("@LAUNCH@ ", "")


SHELL, SCRIPT = wrapper_command()
SAME_AS_STDOUT = "1"  # Launch.stderr: the job's stderr goes to its stdout's file
SETUP_ERRORS = frozenset({"workdir", "stdout", "stderr"})
_SPAWNERS = ThreadPoolExecutor(4, thread_name_prefix="spawn")
_reapers: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class Launch:
    """How the wrapper starts one job. Paths are absolute; "" means the default."""

    stdout: str = ""  # the job's stdout file; "" = $jobdir/stdout
    stderr: str = ""  # its stderr file; "" = $jobdir/stderr; SAME_AS_STDOUT = stdout's file
    workdir: str = ""  # where it must run (it fails if it cannot); "" = the submit directory
    #                    when the worker has it, else the job directory
    interpreter: str = ""  # what the script's #! line names ("" = bash), run as the kernel
    interpreter_arg: str = ""  # would: `interpreter [interpreter_arg] script`

    def argv(self, jobdir: Path) -> list[str]:
        """The job directory comes last (a job finds it there: /proc/$PPID/cmdline)."""
        return [SHELL, "-c", SCRIPT, "scns-job", self.stdout, self.stderr, self.workdir,
                self.interpreter, self.interpreter_arg, str(jobdir)]


DEFAULT_LAUNCH = Launch()


@dataclass(slots=True)
class Spawned:
    wrapper_pid: int
    fd: int
    child_pid: asyncio.Future[int]
    status: asyncio.Future[int]
    # what the wrapper and the processes it waited for (the job and every descendant the job
    # waited for) consumed, from wait4 when we reap it; None for an adopted job (not our child)
    rusage: asyncio.Future[resource.struct_rusage | None]
    # The kernel counts, in a process's own peak RSS, the peak of the memory it was exec'd
    # from: for the wrapper, spawned from the executor, the executor's own peak. wait4's peak
    # RSS tells the job's only when it is above this (read just after the spawn).
    spawner_peak_kb: int = 0
    # what the wrapper could not set up (a SETUP_ERRORS name), when the job never started
    error: str | None = None
    _buf: bytes = b""


async def spawn(jobdir: Path, env: dict[str, str], launch: Launch = DEFAULT_LAUNCH) -> Spawned:
    """Start the wrapper for the job prepared in `jobdir` (which holds `script`).

    posix_spawn returns only once the child has exec'd; on a busy machine that can take
    milliseconds, so it runs on a small thread pool (it releases the GIL) and the event loop
    keeps serving other jobs meanwhile."""
    r, w = os.pipe()
    if w == 3:  # dup2(3, 3) would leave close-on-exec set
        w2 = os.dup(w)
        os.close(w)
        w = w2
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(jobdir / "wrapper.log"),
         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
        (os.POSIX_SPAWN_DUP2, w, 3),
    ]
    argv = launch.argv(jobdir)
    loop = asyncio.get_running_loop()
    try:
        pid = await loop.run_in_executor(
            _SPAWNERS, functools.partial(os.posix_spawn, SHELL, argv, env, file_actions=actions,
                                         setsid=True))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    sp = Spawned(wrapper_pid=pid, fd=r, child_pid=loop.create_future(),
                 status=loop.create_future(), rusage=loop.create_future(),
                 spawner_peak_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    loop.add_reader(r, _on_readable, sp)
    return sp


def _on_readable(sp: Spawned) -> None:
    try:
        data = os.read(sp.fd, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        sp._buf += data
        *lines, sp._buf = sp._buf.split(b"\n")
        for line in lines:
            kind, _, value = line.decode(errors="replace").partition(" ")
            if kind == "pid" and value.isdigit() and not sp.child_pid.done():
                sp.child_pid.set_result(int(value))
            elif kind == "exit" and value.isdigit() and not sp.status.done():
                sp.status.set_result(int(value))
            elif kind == "error" and value in SETUP_ERRORS:
                sp.error = value
        return
    # EOF: the wrapper is gone
    loop = asyncio.get_running_loop()
    loop.remove_reader(sp.fd)
    os.close(sp.fd)
    if not sp.child_pid.done():
        sp.child_pid.set_exception(ProcessLookupError("the job wrapper exited before starting"))
    if not sp.status.done():
        sp.status.set_result(-1)  # unknown: the caller reads the status file, then gives up
    task = loop.create_task(reap(sp))
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)


async def reap(sp: Spawned) -> None:
    """Collect the wrapper's exit and its resource usage (it follows its last write to the
    pipe within microseconds)."""
    delay = 0.001
    usage: resource.struct_rusage | None = None
    try:
        for _ in range(200):
            try:
                done, _, ru = os.wait4(sp.wrapper_pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG
            except ChildProcessError:
                return
            if done:
                usage = ru
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        if not sp.rusage.done():
            sp.rusage.set_result(usage)


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a job's whole process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def alive(pid: int | None, *, not_before: float) -> bool:
    """Is `pid` a live process started no earlier than `not_before` (a recycled pid is not
    ours)?"""
    if pid is None:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and p.create_time() >= not_before - 1.0
    except psutil.Error:
        return False


def belongs_to(pid: int | None, *, job_id: int, attempt: int, not_before: float) -> bool:
    """Is `pid` a live process of this job's attempt? The pid comes from a file the job can
    write, so it must not only be alive and younger than the job, but carry the job's own
    SCNS_JOB_ID and SCNS_ATTEMPT: a job that writes another process's pid there (the
    executor's, say) gets nothing signalled or adopted but its own processes."""
    if pid is None or pid in (os.getpid(), os.getppid()) or not alive(pid, not_before=not_before):
        return False
    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return env.get("SCNS_JOB_ID") == str(job_id) and env.get("SCNS_ATTEMPT") == str(attempt)


def adopt(jobdir: Path, child: int | None, wrapper: int | None, *,
          alive_check: Callable[[int | None], bool]) -> Spawned:
    """Watch a job a previous executor started (we are not its parent): its status arrives in
    the status file, written by its wrapper, which outlived that executor. `child` is None when
    the job's own process is not known for sure (nothing will be signalled then)."""
    loop = asyncio.get_running_loop()
    sp = Spawned(wrapper_pid=wrapper or -1, fd=-1, child_pid=loop.create_future(),
                 status=loop.create_future(), rusage=loop.create_future())
    if child is None:
        sp.child_pid.set_exception(ProcessLookupError("the job's process is not known"))
        sp.child_pid.exception()  # retrieved: nobody has to
    else:
        sp.child_pid.set_result(child)
    sp.rusage.set_result(None)
    task = loop.create_task(_watch_adopted(sp, jobdir, child, wrapper, alive_check))
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)
    return sp


async def _watch_adopted(sp: Spawned, jobdir: Path, child: int | None, wrapper: int | None,
                         alive_check: Callable[[int | None], bool]) -> None:
    """The wrapper's status file, once valid, is the answer. Without one: once the wrapper is
    gone (nothing will write it), or the job has been gone for a while, the answer is unknown
    (-1) and the supervisor decides."""
    job_gone_polls = 0
    while not sp.status.done():
        status = read_status(jobdir)
        if status.value is not None:
            sp.status.set_result(status.value)
            return
        job_gone_polls = 0 if alive_check(child) else job_gone_polls + 1
        if not alive_check(wrapper) or job_gone_polls > 2:
            status = read_status(jobdir)  # one last look: the write may just have landed
            sp.status.set_result(status.value if status.value is not None else -1)
            return
        await asyncio.sleep(0.5)


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
