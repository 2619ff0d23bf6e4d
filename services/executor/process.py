"""Starting and watching job processes without asyncio's subprocess machinery.

Jobs start from the executor's launcher (launcher.py, launcher_proc.py: one fork and one exec
per job) in every containment mode but one: under the subreaper helper, which must wait for each
job's every descendant, a job starts through the shell wrapper described here. `Spawned`, the
pid and status files and adoption are the same for both.

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

How the wrapper is started depends on the executor's containment and on who the job runs as
(`Wrapper`; containment.py, privilege.py), each a shell builtin or one exec more:
* as the executor's user, no cgroup: as above (one exec of /bin/sh, then setsid and the job);
* cgroup mode: the same script first writes its own pid into the job's cgroups (`ENTRY`, echo
  into `cgroup.procs`), so that the job is born inside them;
* as another user (a root executor): everything up to the switch runs with a minimal
  environment (`root_env`); the cgroup entry, if any, is done as root, then `setpriv` execs the
  wrapper proper as the job's user, which first sources the job's environment from
  `$jobdir/env` and only then opens the output files: with the job's own rights;
* subreaper mode: the containment helper (`HELPER`, Python) starts the wrapper in a session of
  its own; the wrapper writes the pid file and reports the pid as usual, then *becomes* the job
  (`EXEC_TAIL`), and the helper, which waits for it, records and reports the status once every
  descendant is gone. The helper's last argument is the job directory too.
Every wrapper raises its own `oom_score_adj` to 1000 (a builtin write), which the job inherits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.executor.containment import HELPER
from services.executor.environment import DEFAULT_PATH
from services.executor.privilege import DROP, Account, drop_prefix
from services.executor.usage import own_mm_peak_kb
from shared.jobfiles import read_status

# The wrapper proper, as the job's user: its working directory, its output files, the command.
INNER = r"""
jobdir=$6 out=${1:-$6/stdout} err=${2:-$6/stderr} wd=$3 run=$4 arg=$5
{ printf '1000\n' >/proc/self/oom_score_adj; } 2>/dev/null
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
"""
# ... then starts the job in a session of its own and waits for it,
FORK_TAIL = r"""@LAUNCH@ "$@" </dev/null >&4 2>&5 3>&- 4>&- 5>&- &
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
# ... or, under the subreaper helper (which made the session, waits and records the status),
# becomes the job.
EXEC_TAIL = r"""printf '%s %s\n' "$$" "$PPID" >"$jobdir/pid"
printf 'pid %s\n' "$$" >&3
exec "$@" </dev/null >&4 2>&5 3>&- 4>&- 5>&-
"""
# When the job runs as another user, everything before the switch gets a minimal environment
# and the job's own arrives through this file (privilege.py); sourced before our variables are
# set, so that it cannot change them.
ENV_SOURCE = '. "$6/env" || exit 120\n'
# Into the job's cgroups, as the executor's user, before anything else (cgroups.py).
ENTRY = r"""leaf=${@JOBDIR@##*/}
for cg in @DIRS@; do
  [ -d "$cg/$leaf" ] || continue
  echo $$ >"$cg/$leaf/cgroup.procs" || { set -C; printf '1\n' >"${@JOBDIR@}/status"
    printf 'error cgroup\nexit 1\n' >&3; exit 0; }
done
"""
# Then, for a job that runs as another user, the switch: uid, gid and groups come first.
DROP_EXEC = r"""u=$1 g=$2 n=$3; shift 3
exec @DROP@ /bin/sh -c @INNER@ "$0" "$@"
"""
SETPRIV_WORDS = '--reuid="$u" --regid="$g" --groups="$n" --'
WRAPPER = INNER + FORK_TAIL

BASH = "/bin/bash"
SH = "/bin/sh"
SETSID = shutil.which("setsid", path="/usr/bin:/bin")


def wrapper_command() -> tuple[str, str]:
    """(shell, script) of the plain wrapper on this machine."""
    if SETSID and os.path.exists(SH):
        return SH, WRAPPER.replace("@LAUNCH@", SETSID)
    return BASH, "set -m\n" + WRAPPER.replace("@LAUNCH@ ", "")


SHELL, SCRIPT = wrapper_command()
SAME_AS_STDOUT = "1"  # Launch.stderr: the job's stderr goes to its stdout's file
SETUP_ERRORS = frozenset({"workdir", "stdout", "stderr", "cgroup"})
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

    def args(self, jobdir: Path) -> list[str]:
        return [self.stdout, self.stderr, self.workdir, self.interpreter, self.interpreter_arg,
                str(jobdir)]

    def argv(self, jobdir: Path) -> list[str]:
        """The plain wrapper's command. The job directory comes last (a job finds it there:
        /proc/$PPID/cmdline)."""
        return [SHELL, "-c", SCRIPT, "scns-job", *self.args(jobdir)]


DEFAULT_LAUNCH = Launch()


@functools.cache
def _script(*, entry_dirs: tuple[str, ...] = (), switch: str | None = None,
            env_file: bool = False, subreaper: bool = False) -> str:
    """The wrapper script for one kind of start (cached: a handful per executor). `switch`:
    the words that exec what follows as the job's user, after the cgroup entry."""
    inner = (ENV_SOURCE if env_file else "") + INNER + (
        EXEC_TAIL if subreaper else FORK_TAIL.replace("@LAUNCH@", SETSID or "setsid"))
    if not entry_dirs:
        return inner
    dirs = " ".join(shlex.quote(d) for d in entry_dirs)
    if switch is None:
        return ENTRY.replace("@JOBDIR@", "6").replace("@DIRS@", dirs) + inner
    return (ENTRY.replace("@JOBDIR@", "9").replace("@DIRS@", dirs)
            + DROP_EXEC.replace("@DROP@", switch).replace("@INNER@", shlex.quote(inner)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Wrapper:
    """How this executor starts a job's wrapper: into its cgroups (`entry_dirs`), under the
    subreaper helper, and as the job's user when that is not the executor's.

    A job running as another user is started through `setpriv` (or, without it, Python doing
    the same); in cgroup mode the wrapper first enters the job's cgroups as the executor's user
    (root) and then execs that switch. Each stage that runs as root gets `root_env` only."""

    entry_dirs: tuple[str, ...] = ()
    subreaper: bool = False
    setpriv: str | None = None
    python: str = sys.executable

    def argv(self, launch: Launch, jobdir: Path, account: Account | None = None) -> list[str]:
        args = launch.args(jobdir)
        if self.entry_dirs and account is not None:
            switch = (f"{shlex.quote(self.setpriv)} {SETPRIV_WORDS}" if self.setpriv else
                      f"{shlex.quote(self.python)} -I -S -c {shlex.quote(DROP)} "
                      '"$u" "$g" "$n"')
            script = _script(entry_dirs=self.entry_dirs, switch=switch, env_file=True)
            return [SH, "-c", script, "scns-job", str(account.uid), str(account.gid),
                    account.group_list, *args]
        if self.entry_dirs:
            return [SH, "-c", _script(entry_dirs=self.entry_dirs), "scns-job", *args]
        if account is None and not self.subreaper:
            return launch.argv(jobdir)
        prefix = [] if account is None else drop_prefix(account, setpriv_path=self.setpriv,
                                                        python=self.python)
        script = _script(env_file=account is not None, subreaper=self.subreaper)
        cmd = [*prefix, SH, "-c", script, "scns-job", *args]
        return [self.python, "-I", "-S", "-c", HELPER, *cmd] if self.subreaper else cmd

    @staticmethod
    def spawn_env(env: dict[str, str], account: Account | None) -> dict[str, str]:
        """What the first process gets: the job's environment, or, when it runs as root on the
        way to another user, only what cannot be abused (its id: see belongs_to())."""
        if account is None:
            return env
        return root_env(env)


def root_env(env: Mapping[str, str]) -> dict[str, str]:
    return {"PATH": DEFAULT_PATH, **{k: env[k] for k in ("SCNS_JOB_ID", "SCNS_ATTEMPT")
                                     if k in env}}


PLAIN = Wrapper()


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
    # from: for the wrapper, spawned from the executor, the peak of the executor's own memory
    # (its VmHWM, usage.own_mm_peak_kb). wait4's peak RSS tells the job's only when it is
    # above this (read just after the spawn).
    spawner_peak_kb: int = 0
    # what the wrapper could not set up (a SETUP_ERRORS name), when the job never started
    error: str | None = None
    _buf: bytes = b""


async def spawn(jobdir: Path, env: dict[str, str], launch: Launch = DEFAULT_LAUNCH, *,
                wrapper: Wrapper = PLAIN, account: Account | None = None) -> Spawned:
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
    argv = wrapper.argv(launch, jobdir, account)
    env = wrapper.spawn_env(env, account)
    loop = asyncio.get_running_loop()
    try:
        pid = await loop.run_in_executor(
            _SPAWNERS, functools.partial(os.posix_spawn, argv[0], argv, env,
                                         file_actions=actions, setsid=True))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    sp = Spawned(wrapper_pid=pid, fd=r, child_pid=loop.create_future(),
                 status=loop.create_future(), rusage=loop.create_future(),
                 spawner_peak_kb=own_mm_peak_kb())
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
          alive_check: Callable[[int | None], bool],
          wrapper_check: Callable[[int | None], bool] | None = None) -> Spawned:
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
    task = loop.create_task(_watch_adopted(sp, jobdir, child, wrapper, alive_check=alive_check,
                                           wrapper_check=wrapper_check or alive_check))
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)
    return sp


async def _watch_adopted(sp: Spawned, jobdir: Path, child: int | None, wrapper: int | None, *,
                         alive_check: Callable[[int | None], bool],
                         wrapper_check: Callable[[int | None], bool]) -> None:
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
        if not wrapper_check(wrapper) or job_gone_polls > 2:
            status = read_status(jobdir)  # one last look: the write may just have landed
            sp.status.set_result(status.value if status.value is not None else -1)
            return
        await asyncio.sleep(0.5)


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
