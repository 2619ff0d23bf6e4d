"""The pure parts of job containment: finding our cgroups, what a job cgroup is given, the
watchdog's rule, the job's account, where job directories may live, and the wrapper commands.
(The real thing, with processes, is tests/integration/test_containment.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor import cgroups
from services.executor.cgroups import Base, CgroupTree, discover, keyed
from services.executor.containment import HELPER, cgroup_name, over_limit
from services.executor.environment import base_environment, for_account, shell_exports
from services.executor.privilege import (
    DROP,
    Account,
    JobUsers,
    blocking_dir,
    fallback_jobs_dir,
    job_users,
    jobs_directory,
)
from services.executor.process import SH, Launch, Wrapper, _script, root_env
from services.executor.usage import Stat, total, tree
from shared.errors import ConfigError
from shared.jobfiles import NotOwned, open_regular
from shared.settings import Settings

# --- finding our cgroups ----------------------------------------------------------------------
HYBRID_CGROUP = """9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
"""
HYBRID_MOUNTS = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
"""


def test_discover_a_hybrid_host() -> None:
    found = {(h.version, tuple(sorted(h.controllers))): h.own
             for h in discover(HYBRID_CGROUP, HYBRID_MOUNTS)}
    assert found == {
        (1, ("pids",)): Path("/sys/fs/cgroup/pids"),
        (1, ("freezer",)): Path("/sys/fs/cgroup/freezer"),
        (1, ("memory",)): Path("/sys/fs/cgroup/memory/process_api/abc"),
        (1, ("cpu", "cpuacct")): Path("/sys/fs/cgroup/cpu,cpuacct"),
        (2, ()): Path("/sys/fs/cgroup/unified"),
    }


def test_discover_pure_v2_in_a_container_and_after_moving_ourselves() -> None:
    mounts = "40 30 0:33 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    (h,) = discover("0::/kubepods/pod1/ctr\n", mounts)
    assert (h.version, h.own) == (2, Path("/sys/fs/cgroup/ctr"))
    # the executor moved itself into scns-executor last time: its own cgroup is the parent
    (h,) = discover("0::/system.slice/scns.service/scns-executor\n",
                    "40 30 0:33 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert h.own == Path("/sys/fs/cgroup/system.slice/scns.service")
    # a cgroup outside what is mounted is not ours to use
    assert discover("0::/elsewhere\n", mounts) == []


def test_discover_unescapes_mount_points() -> None:
    mounts = "40 30 0:33 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n"
    (h,) = discover("0::/a\n", mounts)
    assert h.own == Path("/mnt/cg v2/a")


def test_keyed_files() -> None:
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert keyed(text, "oom_kill") == 3
    assert keyed(text, "missing") is None
    assert keyed(None, "oom_kill") is None


def test_oom_and_members_are_read_from_the_leaf(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    tree_ = CgroupTree([Base(version=2, path=v2, memory=True, kill=True),
                        Base(version=1, path=v1, memory=True)])
    (v2 / "1.1").mkdir(parents=True)
    (v2 / "1.1" / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n")
    (v2 / "1.1" / "cgroup.procs").write_text("12\n34\n")
    assert tree_.procs("1.1") == [12, 34]
    assert not tree_.oom_killed("1.1")
    (v1 / "1.1").mkdir(parents=True)
    (v1 / "1.1" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n"
                                                    "oom_kill 1\n")
    assert tree_.oom_killed("1.1")
    (v1 / "2.1").mkdir()
    (v1 / "2.1" / "memory.failcnt").write_text("7\n")  # an old kernel: no oom_kill count
    assert tree_.oom_killed("2.1")
    assert tree_.leaves() == {"1.1", "2.1"}
    assert tree_.procs("9.1") is None


async def test_what_a_job_cgroup_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    writes: dict[str, str] = {}
    monkeypatch.setattr(cgroups, "write_text",
                        lambda p, v: writes.__setitem__(os.path.relpath(p, tmp_path), v))
    v2 = Base(version=2, path=tmp_path / "v2", memory=True, pids=True, kill=True)
    for b in (v2,):
        b.path.mkdir()
    await CgroupTree([v2]).prepare("5.1", memory_mb=100, pids_max=64)
    assert writes == {"v2/5.1/memory.max": str(100 << 20), "v2/5.1/memory.swap.max": "0",
                      "v2/5.1/pids.max": "64"}
    writes.clear()
    hybrid = [Base(version=2, path=tmp_path / "u", kill=True),
              Base(version=1, path=tmp_path / "pids", pids=True),
              Base(version=1, path=tmp_path / "mem", memory=True)]
    for b in hybrid:
        b.path.mkdir()
    t = CgroupTree(hybrid)
    assert t.memory and t.pids and t.entry_dirs() == [str(b.path) for b in hybrid]
    await t.prepare("6.1", memory_mb=None, pids_max=64)
    assert writes == {"pids/6.1/pids.max": "64"}
    assert not (tmp_path / "mem" / "6.1").exists()  # no memory cgroup without a limit
    await t.prepare("7.1", memory_mb=10, pids_max=64)
    assert writes["mem/7.1/memory.limit_in_bytes"] == str(10 << 20)
    assert writes["mem/7.1/memory.memsw.limit_in_bytes"] == str(10 << 20)


def test_cgroup_names_are_per_worker_and_jobs_directory() -> None:
    a = cgroup_name("w1", Path("/data/a/jobs"))
    assert a == cgroup_name("w1", Path("/data/a/jobs"))  # a restarted executor finds its own
    assert a != cgroup_name("w1", Path("/data/b/jobs"))  # two executors on one host do not mix
    assert a != cgroup_name("w2", Path("/data/a/jobs"))
    assert a.startswith("scns-w1-")


# --- the watchdog and sampling ----------------------------------------------------------------
@pytest.mark.parametrize(("rss_kb", "memory_mb", "over"), [
    (100 * 1024 + 1, 100, True), (100 * 1024, 100, False), (10**9, None, False),
    (10**9, 0, False),
])
def test_over_limit(rss_kb: int, memory_mb: int | None, over: bool) -> None:
    assert over_limit(rss_kb, memory_mb) is over


def test_a_job_tree_is_its_wrappers_descendants_and_its_group() -> None:
    def st(ppid: int, pgrp: int, rss: int) -> Stat:
        return Stat(ppid=ppid, pgrp=pgrp, rss_kb=rss, user_s=0.0, system_s=0.0)

    table = {10: st(1, 10, 1), 11: st(10, 11, 100), 12: st(11, 11, 200), 13: st(12, 13, 300),
             14: st(1, 11, 400),  # double-forked, re-parented to init, still in the group
             15: st(1, 15, 5000)}  # someone else
    assert tree(table, 10, 11) == {11, 12, 13, 14}
    assert total(table.get(p) for p in tree(table, 10, 11)).rss_kb == 1000
    assert tree(table, -1, 11) == {11, 12, 14}


# --- the job's account and its directory ------------------------------------------------------
NOBODY = Account(name="nobody", uid=65534, gid=65534, home="/nonexistent", groups=(65534,))
ALICE = Account(name="alice", uid=1000, gid=1000, home="/home/alice", groups=(1000, 27))
ROOTISH = Account(name="toor", uid=0, gid=0, home="/root")
WHEEL = Account(name="wheel", uid=1001, gid=0, home="/home/wheel")


def accounts(name: str) -> Account | None:
    return {a.name: a for a in (NOBODY, ALICE, ROOTISH, WHEEL)}.get(name)


def test_the_job_user_of_a_root_executor() -> None:
    users = job_users(job_user="nobody", run_as_submitter=False, euid=0, find=accounts)
    assert users.for_job("alice") == NOBODY and users.switching
    users = job_users(job_user="nobody", run_as_submitter=True, euid=0, find=accounts)
    assert users.for_job("alice") == ALICE
    for who in ("toor", "wheel", "nosuch", None):  # never root, else the default
        assert users.for_job(who) == NOBODY


def test_a_non_root_executor_runs_jobs_as_itself() -> None:
    users = job_users(job_user="nobody", run_as_submitter=True, euid=1000, find=accounts)
    assert users.for_job("alice") is None and not users.switching


@pytest.mark.parametrize(("name", "message"), [
    ("nosuch", "no such account"), ("toor", "never run as root"), ("wheel", "gid 0"),
])
def test_an_unusable_job_user_stops_a_root_executor(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        job_users(job_user=name, run_as_submitter=False, euid=0, find=accounts)
    assert "SCNS_JOB_USER" in str(info.value)


def test_submitter_accounts_are_cached_for_a_while() -> None:
    calls: list[str] = []
    now = [0.0]

    def find(name: str) -> Account | None:
        calls.append(name)
        return accounts(name)

    users = JobUsers(NOBODY, run_as_submitter=True, find=find, clock=lambda: now[0])
    assert users.for_job("alice") == ALICE and users.for_job("alice") == ALICE
    assert calls == ["alice"]
    now[0] = 61.0
    users.for_job("alice")
    assert calls == ["alice", "alice"]


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory right under the system's temporary directory (every directory above it
    searchable by anyone, unlike pytest's own), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="scns-unit-"))
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_blocking_dir_reads_the_mode_bits(open_base: Path) -> None:
    outsider = Account(name="x", uid=os.geteuid() + 4242, gid=os.getegid() + 4242, home="/")
    a = open_base / "a"
    (a / "b").mkdir(parents=True)
    os.chmod(a, 0o700)
    assert blocking_dir(a / "b", outsider) == a
    os.chmod(a, 0o701)
    assert blocking_dir(a / "b", outsider) is None
    os.chmod(a, 0o710)
    member = Account(name="m", uid=os.geteuid() + 4242, gid=4242, home="/",
                     groups=(4242, os.stat(a).st_gid))
    assert blocking_dir(a / "b", member) is None and blocking_dir(a / "b", outsider) == a
    me = Account(name="me", uid=os.geteuid(), gid=os.getegid() + 4242, home="/")
    os.chmod(a, 0o600)
    assert blocking_dir(a / "b", me) == a  # the owner's own bits count
    os.chmod(a, 0o700)
    assert blocking_dir(a / "b", me) is None


def test_jobs_directory_falls_back_or_refuses(open_base: Path) -> None:
    data = open_base / "closed" / "data"
    data.mkdir(parents=True)
    os.chmod(open_base / "closed", 0o700)
    outsider = Account(name="x", uid=os.geteuid() + 4242, gid=os.getegid() + 4242, home="/")
    fallback = fallback_jobs_dir(data)
    try:
        where = jobs_directory(configured=None, data_dir=data, account=outsider)
        assert where == fallback and fallback.parent == Path(tempfile.gettempdir())
        assert os.stat(where).st_mode & 0o777 == 0o711
        assert jobs_directory(configured=None, data_dir=data, account=outsider) == where
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
    with pytest.raises(ConfigError, match=r"SCNS_JOBS_DIR=.*cannot reach it.*closed \(mode 0700"):
        jobs_directory(configured=data / "jobs", data_dir=data, account=outsider)
    # reachable: used as it is, and made traversable (not listable) for the job's user
    os.chmod(open_base / "closed", 0o711)
    assert jobs_directory(configured=None, data_dir=data, account=outsider) == data / "jobs"
    assert os.stat(data / "jobs").st_mode & 0o777 == 0o711
    # the executor's own user reaches it: as before
    assert jobs_directory(configured=None, data_dir=data, account=None) == data / "jobs"


def test_a_jobs_directory_someone_else_can_write_is_not_used(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "jobs").mkdir(mode=0o777)
    os.chmod(tmp_path / "jobs", 0o777)
    with pytest.raises(ConfigError, match="only it can write"):
        jobs_directory(configured=tmp_path / "jobs", data_dir=tmp_path, account=NOBODY)


def test_only_the_jobs_own_files_are_read_for_it(tmp_path: Path) -> None:
    (tmp_path / "stdout").write_text("x")
    os.close(open_regular(tmp_path, "stdout", owner=os.geteuid()))
    with pytest.raises(NotOwned):
        open_regular(tmp_path, "stdout", owner=os.geteuid() + 1)


# --- the environment --------------------------------------------------------------------------
def test_no_executor_secret_reaches_a_job() -> None:
    base = base_environment({"HOME": "/root", "USER": "root", "SCNS_DATABASE_URL": "pg://s",
                             "SCNS_REDIS_URL": "redis://s", "SCNS_TOKEN": "t", "LANG": "C"})
    assert not [k for k in base if k.startswith("SCNS_")]
    assert for_account(base, name="nobody", home="/nonexistent") | {} == {
        **base, "HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody"}
    assert root_env({"SCNS_JOB_ID": "7", "SCNS_ATTEMPT": "1", "LD_PRELOAD": "/x.so",
                     "PATH": "/evil"}) == {"PATH": base["PATH"], "SCNS_JOB_ID": "7",
                                           "SCNS_ATTEMPT": "1"}


def test_shell_exports_survive_the_shell(tmp_path: Path) -> None:
    env = {"A": "plain", "B": "it's \"quoted\" $HOME `x` \\ \n two lines", "C": "",
           "bad-name": "skipped", "_ok1": "1"}
    text, skipped = shell_exports(env)
    assert skipped == ["bad-name"]
    (tmp_path / "env").write_text(text)
    out = subprocess.run([SH, "-c", f'. "{tmp_path}/env"; env -0'], capture_output=True,
                         check=True, env={}).stdout.decode()
    seen = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    assert {k: seen.get(k) for k in ("A", "B", "C", "_ok1")} == {
        k: env[k] for k in ("A", "B", "C", "_ok1")}


# --- the wrapper commands ---------------------------------------------------------------------
JOBDIR = Path("/data/jobs/7.1")
LAUNCH = Launch(stdout="/o", workdir="/w")
ARGS = ["/o", "", "/w", "", "", str(JOBDIR)]


def test_wrapper_commands_keep_the_job_directory_last() -> None:
    cg = Wrapper(entry_dirs=("/cg/u/scns-x", "/cg/pids/scns-x"), setpriv="/usr/bin/setpriv")
    argv = cg.argv(LAUNCH, JOBDIR, ALICE)
    assert argv[0] == SH and argv[3:] == ["scns-job", "1000", "1000", "1000,27", *ARGS]
    assert "for cg in /cg/u/scns-x /cg/pids/scns-x; do" in argv[2]
    assert "exec /usr/bin/setpriv --reuid=" in argv[2]
    assert cg.argv(LAUNCH, JOBDIR)[3:] == ["scns-job", *ARGS]  # the executor's own user
    sub = Wrapper(subreaper=True, setpriv="/usr/bin/setpriv", python="/py")
    argv = sub.argv(LAUNCH, JOBDIR, NOBODY)
    assert argv[:5] == ["/py", "-I", "-S", "-c", HELPER]
    assert argv[5:10] == ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                          "--groups=65534", "--"]
    assert argv[10:12] == [SH, "-c"] and argv[-1] == str(JOBDIR)
    plain = Wrapper(python="/py")  # no setpriv: Python switches
    argv = plain.argv(LAUNCH, JOBDIR, NOBODY)
    assert argv[:8] == ["/py", "-I", "-S", "-c", DROP, "65534", "65534", "65534"]
    assert Wrapper().argv(LAUNCH, JOBDIR) == LAUNCH.argv(JOBDIR)


def test_root_stages_get_no_job_environment() -> None:
    env = {"SCNS_JOB_ID": "7", "SCNS_ATTEMPT": "1", "LD_PRELOAD": "/tmp/x.so"}
    assert Wrapper.spawn_env(env, NOBODY) == root_env(env)
    assert Wrapper.spawn_env(env, None) is env


@pytest.mark.parametrize("kind", [
    {}, {"subreaper": True, "env_file": True}, {"entry_dirs": ("/a b",)},
    {"entry_dirs": ("/a",), "switch": "/usr/bin/setpriv --", "env_file": True},
])
def test_wrapper_scripts_are_valid_shell(kind: dict[str, object]) -> None:
    script = _script(**kind)
    subprocess.run([SH, "-n", "-c", script], check=True)
    if kind.get("env_file"):
        assert script.startswith(". ") or '. "$6/env"' in script
    if kind.get("switch"):  # the entry comes first, as the executor's user
        assert script.index("cgroup.procs") < script.index("exec /usr/bin/setpriv")


def test_helper_and_drop_are_python() -> None:
    compile(HELPER, "helper", "exec")
    compile(DROP, "drop", "exec")


# --- settings and start-up --------------------------------------------------------------------
def test_containment_settings() -> None:
    s = Settings.from_env({})
    assert (s.job_containment, s.job_pids_max, s.job_user, s.run_as_submitter, s.jobs_dir) == (
        "auto", 4096, "nobody", False, None)
    s = Settings.from_env({"SCNS_JOB_CONTAINMENT": "Subreaper", "SCNS_JOB_PIDS_MAX": "64",
                           "SCNS_RUN_AS_SUBMITTER": "1", "SCNS_JOBS_DIR": "/scratch/jobs",
                           "SCNS_JOB_USER": "batch"})
    assert (s.job_containment, s.job_pids_max, s.run_as_submitter, s.jobs_dir, s.job_user) == (
        "subreaper", 64, True, Path("/scratch/jobs"), "batch")
    assert Settings.from_env(s.as_env()) == s
    for env, message in (({"SCNS_JOB_USER": "root"}, "SCNS_JOB_USER must not be root"),
                         ({"SCNS_JOB_CONTAINMENT": "jail"}, "SCNS_JOB_CONTAINMENT must be"),
                         ({"SCNS_JOB_PIDS_MAX": "0"}, "SCNS_JOB_PIDS_MAX")):
        with pytest.raises(ConfigError, match=message):
            Settings.from_env(env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_every_service_makes_itself_non_dumpable() -> None:
    code = ("import asyncio\nfrom shared import runtime\n"
            "async def main():\n    print(runtime.dumpable())\n    return 0\n"
            "raise SystemExit(runtime.run(main))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "False"
