"""Who a job runs as, and where its directory lives.

**The job's account.** An executor that is not root runs jobs as its own user: it cannot do
otherwise. An executor that is root never runs a job as root:

* jobs run as `SCNS_JOB_USER` (default `nobody`), an account that must exist on the node and
  must not be uid 0 nor have gid 0 (start-up fails otherwise, naming the variable);
* with `SCNS_RUN_AS_SUBMITTER=1`, a job runs as its submitting user's own account (`job.user`)
  when the node has an account of that name (as Slurm does), else as `SCNS_JOB_USER`; an
  account with uid 0 or gid 0 is never used.

The switch happens in the wrapper, before it opens anything for the job: `setpriv --reuid
--regid --groups` (util-linux; the account's groups are looked up once, with the account), or,
where setpriv is missing, a few lines of Python doing the same (`setgroups`, `setgid`,
`setuid`, then exec). Every stage that still runs as root
gets a minimal environment (PATH and the job's id): the job's own environment, which the user
controls (LD_PRELOAD, GCONV_PATH, ...), reaches only the stage that already runs as the job's
user, through a file in the job's private directory (`env`, sourced by the wrapper).

**The job directory.** `<jobs dir>/<job id>.<attempt>`, owned by the job's account, mode 0700:
private to the job's user. The jobs directory is `SCNS_JOBS_DIR`, default
`$SCNS_DATA_DIR/jobs` (root's, mode 0711: reachable, not listable). The job's user must be able
to traverse every directory above it, so the executor checks this at start-up for
`SCNS_JOB_USER`:

* an explicit `SCNS_JOBS_DIR` it cannot reach is a start-up error naming the directory that is
  in the way (the operator chose it: we do not second-guess it);
* the default one it cannot reach (a data directory under /root, a pytest temporary directory)
  is replaced by a directory of its own in the system's temporary directory,
  `scns-jobs-<hash of the data directory>`: the same data directory always gives the same one,
  so a restarted executor finds the jobs it left, and two executors never share one. It is
  created by the executor (root, 0711); one that exists already must be a real directory owned
  by the executor and writable by nobody else, or start-up fails.

A job that asks for its submit directory or a `--chdir` its user cannot reach fails or runs in
its job directory exactly as it would for any other user (see scripts.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError

log = logging.getLogger(__name__)

SETPRIV_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
ACCOUNT_CACHE_S = 60.0  # how long a looked-up submitter account (or its absence) is trusted
# Privileges dropped without setpriv: the same steps, in the order setpriv takes them.
DROP = ("import os,sys\n"
        "u,g=int(sys.argv[1]),int(sys.argv[2])\n"
        "os.setgroups([int(x) for x in sys.argv[3].split(',')]);os.setgid(g);os.setuid(u)\n"
        "if os.geteuid()==0 or os.getegid()==0: sys.exit(126)\n"
        "os.execv(sys.argv[4],sys.argv[4:])\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...] = ()  # its groups, the primary one included (looked up once)

    @classmethod
    def from_pwd(cls, p: pwd.struct_passwd) -> Account:
        try:
            groups = tuple(os.getgrouplist(p.pw_name, p.pw_gid))
        except OSError:
            groups = (p.pw_gid,)
        return cls(name=p.pw_name, uid=p.pw_uid, gid=p.pw_gid, home=p.pw_dir, groups=groups)

    @property
    def privileged(self) -> bool:
        return self.uid == 0 or self.gid == 0

    @property
    def group_list(self) -> str:
        return ",".join(str(g) for g in self.groups or (self.gid,))


def lookup(name: str) -> Account | None:
    try:
        return Account.from_pwd(pwd.getpwnam(name))
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


class JobUsers:
    """The account each job runs as; None means the executor's own user."""

    def __init__(self, default: Account | None, *, run_as_submitter: bool = False,
                 find: Callable[[str], Account | None] = lookup,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.default = default
        self.run_as_submitter = run_as_submitter and default is not None
        self._find = find
        self._clock = clock
        self._cache: dict[str, tuple[float, Account | None]] = {}

    @property
    def switching(self) -> bool:
        """Do jobs run as another user than the executor's?"""
        return self.default is not None

    def for_job(self, user: str | None) -> Account | None:
        if self.default is None:
            return None
        if self.run_as_submitter and user:
            found = self._submitter(user)
            if found is not None and not found.privileged:
                return found
        return self.default

    def _submitter(self, user: str) -> Account | None:
        now = self._clock()
        hit = self._cache.get(user)
        if hit is not None and now - hit[0] < ACCOUNT_CACHE_S:
            return hit[1]
        found = self._find(user)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user] = (now, found)
        return found


def job_users(*, job_user: str, run_as_submitter: bool, euid: int,
              find: Callable[[str], Account | None] = lookup) -> JobUsers:
    """Resolve SCNS_JOB_USER / SCNS_RUN_AS_SUBMITTER for an executor running as `euid`;
    ConfigError when a root executor has no usable unprivileged account."""
    if euid != 0:
        if run_as_submitter:
            log.warning("SCNS_RUN_AS_SUBMITTER needs an executor running as root; jobs run as "
                        "the executor's own user", extra={"event": "job-user"})
        return JobUsers(None)
    account = find(job_user)
    if account is None:
        raise ConfigError(f"SCNS_JOB_USER={job_user!r}: no such account on this node (the "
                          "executor runs as root, so jobs need an unprivileged account)")
    if account.privileged:
        raise ConfigError(f"SCNS_JOB_USER={job_user!r} is uid {account.uid} / gid "
                          f"{account.gid}: jobs never run as root (choose an unprivileged "
                          "account, e.g. nobody)")
    return JobUsers(account, run_as_submitter=run_as_submitter, find=find)


def setpriv() -> str | None:
    return shutil.which("setpriv", path=SETPRIV_PATH)


def drop_prefix(account: Account, *, setpriv_path: str | None, python: str) -> list[str]:
    """The command words that run what follows them as `account` (its groups given, not
    looked up again per job)."""
    if setpriv_path:
        return [setpriv_path, f"--reuid={account.uid}", f"--regid={account.gid}",
                f"--groups={account.group_list}", "--"]
    return [python, "-I", "-S", "-c", DROP, str(account.uid), str(account.gid),
            account.group_list]


# --- reaching the jobs directory ------------------------------------------------------------
def blocking_dir(path: Path, account: Account) -> Path | None:
    """The first directory on the way to `path` (itself included) that `account` cannot
    search, by its mode bits (ACLs are not consulted: a directory they open reads as closed,
    which only errs on the safe side); None when it can reach `path`."""
    groups = set(account.groups or (account.gid,))
    for d in [*reversed(path.parents), path]:
        try:
            st = os.stat(d)
        except OSError:
            return d
        if st.st_uid == account.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _describe(d: Path) -> str:
    try:
        st = os.stat(d)
    except OSError as e:
        return f"{d} ({e.strerror})"
    return f"{d} (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"


def _own_dir(path: Path, mode: int) -> None:
    """Create `path` (one level) as ours with `mode`, or accept it if it is already a real
    directory of ours that nobody else can write."""
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # whatever the umask took away
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"{_describe(path)} is not a directory of the executor's own that "
                          "only it can write; remove it or set SCNS_JOBS_DIR")
    if stat.S_IMODE(st.st_mode) & mode != mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) | mode)


def fallback_jobs_dir(data_dir: Path) -> Path:
    tag = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"scns-jobs-{tag}"


def jobs_directory(*, configured: Path | None, data_dir: Path, account: Account | None
                   ) -> Path:
    """Where this executor's job directories live (see the module docstring); created."""
    chosen = (configured or data_dir / "jobs").absolute()
    if account is None:
        chosen.mkdir(parents=True, exist_ok=True)
        return chosen
    chosen.parent.mkdir(parents=True, exist_ok=True)
    try:
        _own_dir(chosen, 0o711)
        blocked = blocking_dir(chosen, account)
    except ConfigError:
        if configured is not None:
            raise
        blocked = chosen  # not safely ours: not used
    if blocked is None:
        return chosen
    if configured is not None:
        raise ConfigError(f"SCNS_JOBS_DIR={configured}: jobs run as {account.name}, who cannot "
                          f"reach it: {_describe(blocked)} is in the way. Make every directory "
                          "on the path searchable by that user (chmod o+x) or choose another")
    fallback = fallback_jobs_dir(data_dir)
    _own_dir(fallback, 0o711)
    still = blocking_dir(fallback, account)
    if still is not None:
        raise ConfigError(f"jobs run as {account.name}, who can reach neither {chosen} "
                          f"({_describe(blocked)} is in the way) nor {fallback} "
                          f"({_describe(still)}); set SCNS_JOBS_DIR to a directory it can "
                          "reach")
    log.warning("jobs run as %s, who cannot reach %s (%s is in the way): job directories are "
                "in %s instead", account.name, chosen, _describe(blocked), fallback,
                extra={"event": "jobs-dir-fallback"})
    return fallback
