"""Containment: when a job ends, for any reason, nothing it started survives; its memory and
process count stay within its limits.

`SCNS_JOB_CONTAINMENT` picks how (`auto`, the default, takes the first that works here):

* **cgroup** — a cgroup per job attempt (cgroups.py), entered by the wrapper before the job
  starts: the kernel enforces `memory_mb` (a job killed for it ends OUT_OF_MEMORY) and
  `SCNS_JOB_PIDS_MAX`, and when the job ends (completed with background processes left, failed,
  timed out, cancelled, requeued, stopped by a drain or a lost lease) the executor kills the
  whole cgroup, `setsid` and double forks included, then removes it. A job whose executor died
  is killed the same way by the next one: when it adopts or collects it, and at start-up for
  any leaf left that no running job owns.
* **subreaper** — no cgroup can be made here (an unprivileged executor, a read-only cgroupfs):
  the job runs under a small helper (`HELPER`, the one Python start this mode adds per job) that
  makes itself the child subreaper of everything the job starts (PR_SET_CHILD_SUBREAPER: an
  orphan, `setsid` or double-forked, is re-parented to it instead of to init), waits for the
  job, then SIGKILLs every remaining descendant before it records the job's status. Memory is
  watched by the executor (`over_limit`): the RSS of the job's process tree, sampled every
  second, and the exact peak from wait4 at the end; a job over `memory_mb` is killed and ends
  OUT_OF_MEMORY. There is no per-job process limit in this mode. When the executor runs as
  root the helper stays root, so the job (another user) can neither kill it nor escape it; a
  job running as the executor's own user could kill its helper and so orphan its processes.
* **none** — the job's process group only (what `setsid` leaves is not found), memory watched
  as in subreaper mode. For platforms without either.

Every job also gets `oom_score_adj` 1000 (the wrapper raises its own, the job inherits it), so
that under memory pressure the kernel kills a job before the executor.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from services.executor.cgroups import CgroupTree
from services.executor.privilege import JobUsers, job_users, jobs_directory, setpriv
from shared.errors import ConfigError

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
CHOICES = ("auto", "cgroup", "subreaper", "none")


class Mode(StrEnum):
    CGROUP = "cgroup"
    SUBREAPER = "subreaper"
    NONE = "none"


# The subreaper helper, run as `python -I -S -c HELPER <wrapper argv...>` (isolated: no
# PYTHON* variables, no site, nothing from the job's directory). It starts the wrapper in a
# session of its own (the wrapper writes the pid file and reports the pid, then execs the job),
# reaps whatever is re-parented to it while it waits, then kills every descendant left (its own
# children directly; deeper ones through a pidfd taken while they are still their parent's
# child, so that a recycled pid is never signalled), and only then records the status (noclobber)
# and reports it on fd 3. The wrapper's last argument, and so the helper's, is the job directory.
HELPER = r"""
import ctypes, os, signal, sys, time
args, jobdir = sys.argv[1:], sys.argv[-1]
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
me = os.getpid()

def children(pid):
    out = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for t in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return out

def kill(parent, pid):
    if parent == me:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if pid in children(parent):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)

def write_once(name, text):
    try:
        fd = os.open(os.path.join(jobdir, name),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError:
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

sigs = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
try:
    child = os.posix_spawn(args[0], args, os.environ, setsid=True, setsigdef=sigs)
except OSError as e:
    sys.stderr.write("scns: cannot start the job wrapper: %s\n" % e)
    child, status = None, 127
while child is not None:
    try:
        pid, st = os.waitpid(-1, 0)
    except ChildProcessError:
        status = 255
        break
    if pid == child:
        status = os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)
        break
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        break
    stack = [(me, c) for c in children(me)]
    while stack:
        parent, pid = stack.pop()
        kill(parent, pid)
        stack.extend((pid, c) for c in children(pid))
    time.sleep(0.002)
write_once("status", "%d\n" % status)
try:
    os.write(3, b"exit %d\n" % status)
except OSError:
    pass
"""


def subreaper_works() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        value = ctypes.c_int(0)
        return int(libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(slots=True)
class Containment:
    """How this executor contains its jobs (see the module docstring)."""

    mode: Mode
    cgroups: CgroupTree | None = None

    @property
    def enforces_memory(self) -> bool:
        """Does the kernel enforce memory_mb (else the executor watches)?"""
        return self.cgroups is not None and self.cgroups.memory

    @property
    def enforces_pids(self) -> bool:
        return self.cgroups is not None and self.cgroups.pids

    def entry_dirs(self) -> list[str]:
        return self.cgroups.entry_dirs() if self.cgroups is not None else []

    async def prepare(self, leaf: str, *, memory_mb: int | None, pids_max: int | None) -> None:
        if self.cgroups is not None:
            await self.cgroups.prepare(leaf, memory_mb=memory_mb, pids_max=pids_max)

    def procs(self, leaf: str) -> list[int] | None:
        """The job's processes when a cgroup knows them; None: look at its process tree."""
        return self.cgroups.procs(leaf) if self.cgroups is not None else None

    async def end(self, leaf: str) -> bool:
        """Kill whatever of the job is left and remove its cgroup; whether the kernel killed
        one of its processes for memory."""
        if self.cgroups is None:
            return False
        return await self.cgroups.end(leaf)

    async def discard(self, leaf: str) -> None:
        if self.cgroups is not None:
            await self.cgroups.discard(leaf)

    def leaves(self) -> set[str]:
        return self.cgroups.leaves() if self.cgroups is not None else set()

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()


def select(choice: str, *, name: str) -> Containment:
    """The containment `SCNS_JOB_CONTAINMENT` asks for; ConfigError when a forced one is not
    possible here."""
    if choice not in CHOICES:
        raise ConfigError(f"SCNS_JOB_CONTAINMENT must be one of {', '.join(CHOICES)} "
                          f"(got {choice!r})")
    if choice == "none":
        return Containment(Mode.NONE)
    if choice in ("auto", "cgroup"):
        tree = CgroupTree.for_this_process(name) if sys.platform.startswith("linux") else None
        if tree is not None:
            return Containment(Mode.CGROUP, tree)
        if choice == "cgroup":
            raise ConfigError("SCNS_JOB_CONTAINMENT=cgroup: this executor cannot create a "
                              "cgroup under its own (run it as root, or give it a delegated "
                              "cgroup v2 subtree)")
    if subreaper_works():
        return Containment(Mode.SUBREAPER)
    if choice == "subreaper":
        raise ConfigError("SCNS_JOB_CONTAINMENT=subreaper: PR_SET_CHILD_SUBREAPER is not "
                          "available (Linux only)")
    return Containment(Mode.NONE)


def cgroup_name(worker_id: str, jobs_dir: Path) -> str:
    """This executor's cgroup: the same for a restarted executor of the same worker and jobs
    directory (it finds the jobs it left), different for any other executor on the host."""
    tag = hashlib.sha256(str(jobs_dir.absolute()).encode()).hexdigest()[:8]
    return f"scns-{worker_id}-{tag}"


def over_limit(rss_kb: int, memory_mb: int | None) -> bool:
    """The watchdog's rule (modes without a memory cgroup): over the job's memory_mb."""
    return bool(memory_mb) and rss_kb > (memory_mb or 0) * 1024


@dataclass(slots=True, kw_only=True)
class Isolation:
    """Everything about how this executor's jobs are kept apart, decided at start-up."""

    jobs_dir: Path
    containment: Containment = field(default_factory=lambda: Containment(Mode.NONE))
    users: JobUsers = field(default_factory=lambda: JobUsers(None))
    pids_max: int | None = None
    setpriv: str | None = None
    python: str = sys.executable

    def describe(self) -> str:
        c = self.containment
        where = f" in {c.cgroups.describe()}" if c.cgroups is not None else ""
        who = (f"as {self.users.default.name}" + (" (or the submitter's own account)"
                                                   if self.users.run_as_submitter else "")
               if self.users.default is not None else "as the executor's user")
        return (f"jobs run {who}, contained by {c.mode}{where}; memory limits "
                f"{'by the kernel' if c.enforces_memory else 'by the watchdog'}; pids limit "
                f"{self.pids_max if c.enforces_pids else 'not enforced'}; job directories "
                f"in {self.jobs_dir}")


def prepare(*, job_containment: str, job_user: str, run_as_submitter: bool,
            jobs_dir: Path | None, data_dir: Path, worker_id: str, pids_max: int,
            euid: int) -> Isolation:
    """Decide, check and create at start-up; ConfigError explains what cannot work."""
    users = job_users(job_user=job_user, run_as_submitter=run_as_submitter, euid=euid)
    where = jobs_directory(configured=jobs_dir, data_dir=data_dir, account=users.default)
    containment = select(job_containment, name=cgroup_name(worker_id, where))
    if containment.cgroups is not None:
        containment.cgroups.tidy_siblings()
    return Isolation(jobs_dir=where, containment=containment, users=users, pids_max=pids_max,
                     setpriv=setpriv() if users.switching else None)
