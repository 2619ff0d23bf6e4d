"""Containment on the worker, with real processes, a real executor and the real PostgreSQL:
nothing a job started survives its end (in cgroup mode and in subreaper mode), its memory and
process count stay within its limits without touching a job beside it, it cannot read the
executor's secrets, and it runs unprivileged, opening its files with its own rights.

These tests run the executor as root (this machine's CI): they are skipped otherwise, and the
cgroup ones where no cgroup can be made. Every wait is on a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from redis.asyncio import Redis

from services.executor.cgroups import CgroupTree, discover, read_text
from services.executor.containment import Containment, Mode, cgroup_name
from services.executor.service import Executor
from shared.db.jobs import Job, JobSpec, JobStore
from shared.dispatch import ArqDispatcher, Dispatch
from shared.keys import Keys
from shared.lifecycle.store import TransitionStore
from shared.output import read_output
from shared.settings import Settings
from shared.states import JobState
from tests.helpers import alive_with, open_epoch, wire
from tests.procs import ROOT, running, start_service

ROOT_ONLY = os.geteuid() == 0 and sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not ROOT_ONLY or shutil.which("setsid") is None,
                                reason="needs Linux, root and util-linux")
NOBODY = pwd.getpwnam("nobody").pw_uid if ROOT_ONLY else 65534
PYTHON3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")


def cgroups_here() -> bool:
    tree = CgroupTree.for_this_process(f"scns-probe-{uuid.uuid4().hex[:8]}")
    if tree is None:
        return False
    tree.close()
    return True


CGROUPS = ROOT_ONLY and cgroups_here()
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="no cgroup can be made here")
MODES = [pytest.param("cgroup", marks=needs_cgroups), "subreaper"]


def marker() -> str:
    """A number nothing else on this machine sleeps for (a sleep's argument)."""
    return f"{100_000 + secrets.randbelow(800_000)}.{secrets.randbelow(10**6):06d}"


def survivors(ex: Executor, job_id: int, *markers: str) -> list[int]:
    """The job's background processes (by the pids it recorded) still running their sleep,
    and any other process whose command line has one of the markers."""
    found = set()
    jobdir = ex.runner.jobs_dir / f"{job_id}.1"
    for name, m in zip(("bg1", "bg2"), markers, strict=True):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            p = psutil.Process(int((jobdir / name).read_text()))
            if p.status() != psutil.STATUS_ZOMBIE and m in " ".join(p.cmdline()):
                found.add(p.pid)
    for m in markers:
        found.update(p.pid for p in alive_with(m))
    return sorted(found)




def background(*markers: str) -> str:
    """A script prefix leaving a `setsid` child and a double-forked one behind (their pids in
    `bg1` and `bg2` in its job directory, its working directory), and waiting (at most 30 s)
    until both run their `sleep` before it says "started" and goes on."""
    m1, m2 = markers
    p1, p2 = (m.replace(".", "[.]") for m in markers)
    seen = ("[ -s bg1 ] && [ -s bg2 ] && "
            f"grep -q '{p1}' /proc/$(cat bg1)/cmdline && grep -q '{p2}' /proc/$(cat bg2)/cmdline")
    return (f"setsid -f sh -c 'echo $$ > bg1; exec sleep {m1}'\n"
            f"( (sh -c 'echo $$ > bg2; exec sleep {m2}' &) & )\n"
            f"i=0; until {seen} 2>/dev/null || [ $i -gt 600 ]; do i=$((i+1)); sleep 0.05; done\n"
            f"{seen} && echo started\n")


async def until(check: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Node:
    settings: Settings
    redis: Redis
    keys: Keys
    pool: asyncpg.Pool[Any]
    dir: Path

    @contextlib.asynccontextmanager
    async def executor(self, **overrides: Any) -> AsyncIterator[Executor]:
        s = dataclasses.replace(self.settings, **overrides)
        ex = Executor(wire(s, self.redis, self.pool), dict(os.environ))
        await ex.start()
        stop = asyncio.Event()
        tend = asyncio.create_task(ex.runner.tend(stop))  # sampling (the watchdog), shipping
        try:
            yield ex
        finally:
            if ex.runner.running:
                await ex.runner.stop_all(JobState.NODE_FAIL, "test over")
            stop.set()
            await tend
            await ex.runner.close()
            await ex.heartbeat.deregister()
            ex.close()

    async def start(self, ex: Executor, **spec: Any) -> int:
        t = TransitionStore(self.pool)
        job = await t.insert(JobSpec(**spec), idempotency_key=None)
        assert job is not None
        assert await t.place([(job.id, 1, ex.worker_id)])
        assert await ex.runner.launch(job.id, 1)
        return job.id

    async def ended(self, ex: Executor, job_id: int, timeout: float = 60.0) -> Job:
        await until(lambda: job_id not in ex.runner.running, f"job {job_id} to end", timeout)
        job = await JobStore(self.pool).get(job_id)
        assert job is not None
        return job

    async def run(self, ex: Executor, **spec: Any) -> Job:
        return await self.ended(ex, await self.start(ex, **spec))

    def output(self, ex: Executor, job_id: int, attempt: int = 1) -> str:
        path = ex.runner.jobs_dir / f"{job_id}.{attempt}" / "stdout"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
async def node(settings: Settings, redis: Redis, keys: Keys, pool: asyncpg.Pool[Any],
               job_tmp_path: Path) -> Node:
    await open_epoch(redis, keys)
    s = dataclasses.replace(settings, worker_id=f"contain-{uuid.uuid4().hex[:6]}",
                            data_dir=job_tmp_path / "node", worker_cpus=8,
                            worker_memory_mb=8192, kill_grace_s=1.0)
    return Node(settings=s, redis=redis, keys=keys, pool=pool, dir=job_tmp_path)


def leaf_gone(ex: Executor, job_id: int, attempt: int = 1) -> bool:
    return f"{job_id}.{attempt}" not in ex.runner.isolation.containment.leaves()


# --- no survivors ----------------------------------------------------------------------------
ENDINGS = {
    # how the job ends -> (script after the background is started, spec, expected state)
    "completed": ("until [ -e @FLAG@ ]; do sleep 0.05; done\nexit 0\n", {}, JobState.COMPLETED),
    "failed": ("until [ -e @FLAG@ ]; do sleep 0.05; done\nexit 3\n", {}, JobState.FAILED),
    "timeout": ("trap '' TERM\nwhile :; do sleep 1; done\n", {"time_limit_s": 4},
                JobState.TIMEOUT),
    "cancelled": ("trap '' TERM\nwhile :; do sleep 1; done\n", {}, JobState.CANCELLED),
    "requeued": ("while :; do sleep 1; done\n", {}, JobState.PENDING),
    "drained": ("while :; do sleep 1; done\n", {}, JobState.NODE_FAIL),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("mode", MODES)
async def test_nothing_a_job_started_survives_its_end(node: Node, mode: str,
                                                      ending: str) -> None:
    m1, m2 = marker(), marker()
    rest, spec, expected = ENDINGS[ending]
    flag = node.dir / "end-now"
    async with node.executor(job_containment=mode) as ex:
        assert ex.runner.isolation.containment.mode is Mode(mode)
        job_id = await node.start(ex, script=background(m1, m2)
                                  + rest.replace("@FLAG@", str(flag)), **spec)
        # the job saw both running (and they escaped its process group): it says "started"
        await until(lambda: "started" in node.output(ex, job_id), "the job's background")
        if ending in ("completed", "failed"):
            flag.touch()
        elif ending == "cancelled":
            assert await ex.runner.cancel(job_id, 1)
        elif ending == "requeued":
            await ex.lifecycle.requeue(job_id)
            assert await ex.runner.cancel(job_id, 1, requeue=True)  # what the control does
        elif ending == "drained":
            await ex.runner.stop_all(JobState.NODE_FAIL, "executor shut down")
        job = await node.ended(ex, job_id)
        # the end is recorded only once nothing of the job is left: no waiting here
        assert survivors(ex, job_id, m1, m2) == []
        assert job.state is expected, (job.state, job.reason)
        if ending == "requeued":
            assert job.attempt == 2
        assert leaf_gone(ex, job_id)


def v1_only(name: str, *, freezer: bool) -> CgroupTree | None:
    """This host's cgroup v1 hierarchies alone (as on a host without cgroup v2's
    cgroup.kill), with or without the freezer."""
    text, mounts = read_text(Path("/proc/self/cgroup")), read_text(Path("/proc/self/mountinfo"))
    assert text is not None and mounts is not None
    found = [h for h in discover(text, mounts)
             if h.version == 1 and (freezer or "freezer" not in h.controllers)]
    return CgroupTree.create(found, name)


@needs_cgroups
@pytest.mark.parametrize("freezer", [True, False], ids=["freezer", "kill-loop"])
async def test_without_cgroup_kill_every_member_is_killed(node: Node, freezer: bool) -> None:
    m1, m2 = marker(), marker()
    flag = node.dir / "end-now"
    async with node.executor(job_containment="cgroup") as ex:
        tree = v1_only(cgroup_name(ex.worker_id, ex.runner.jobs_dir) + "-v1", freezer=freezer)
        if tree is None or not tree.pids:
            pytest.skip("no cgroup v1 pids hierarchy here")
        try:
            assert not any(b.kill for b in tree.bases)
            assert any(b.freeze for b in tree.bases) is freezer
            ex.runner.configure(dataclasses.replace(
                ex.runner.isolation, containment=Containment(Mode.CGROUP, tree)))
            job_id = await node.start(ex, memory_mb=200, script=background(m1, m2)
                                      + f"until [ -e {flag} ]; do sleep 0.05; done\n")
            await until(lambda: "started" in node.output(ex, job_id), "the job's background")
            flag.touch()
            job = await node.ended(ex, job_id)
            assert job.state is JobState.COMPLETED
            assert survivors(ex, job_id, m1, m2) == []
            assert leaf_gone(ex, job_id)
        finally:
            tree.close()


# --- limits ----------------------------------------------------------------------------------
BOMB = """#!/usr/bin/python3
import os, sys, time
for i in range(2000):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork failed after", i, e, flush=True)
        sys.exit(3)
    if pid == 0:
        time.sleep(600)
        os._exit(0)
print("no limit", flush=True)
"""


@needs_cgroups
async def test_a_fork_bomb_is_stopped_by_its_pids_limit_alone(node: Node) -> None:
    flag = node.dir / "bomb-done"
    async with node.executor(job_containment="cgroup", job_pids_max=64) as ex:
        neighbour = await node.start(
            ex, script=f"until [ -e {flag} ]; do sleep 0.05; done\necho fine\n")
        bomb = await node.start(ex, script=BOMB)
        bombdir = str(ex.runner.jobs_dir / f"{bomb}.1")
        done = await node.ended(ex, bomb)
        assert done.state is JobState.FAILED and done.exit_code == 3
        assert "fork failed after" in node.output(ex, bomb)
        assert alive_with(bombdir) == []
        assert neighbour in ex.runner.running  # it ran beside the bomb the whole time
        flag.touch()
        assert (await node.ended(ex, neighbour)).state is JobState.COMPLETED
        assert node.output(ex, neighbour) == "fine\n"
        # and the executor goes on running jobs
        after = await node.run(ex, script="echo after\n")
        assert after.state is JobState.COMPLETED


@pytest.mark.skipif(PYTHON3 is None, reason="needs python3")
@pytest.mark.parametrize(("mode", "hold"), [
    pytest.param("cgroup", False, marks=needs_cgroups),
    ("subreaper", True),  # the watchdog catches it while it holds the memory
    ("subreaper", False),  # it ended before a sample: wait4's exact peak tells
])
async def test_a_job_over_its_memory_ends_out_of_memory_alone(node: Node, mode: str,
                                                              hold: bool) -> None:
    flag = node.dir / "hog-done"
    hog = f"b = b'x' * (800 << 20)\nimport time\ntime.sleep({120 if hold else 0})\n"
    async with node.executor(job_containment=mode) as ex:
        assert ex.runner.isolation.containment.enforces_memory is (mode == "cgroup")
        neighbour = await node.start(
            ex, memory_mb=200, script=f"until [ -e {flag} ]; do sleep 0.05; done\necho fine\n")
        job_id = await node.start(ex, memory_mb=100, script=f"#!{PYTHON3}\n{hog}")
        done = await node.ended(ex, job_id)
        assert done.state is JobState.OUT_OF_MEMORY, (done.state, done.reason)
        assert alive_with(str(ex.runner.jobs_dir / f"{job_id}.1")) == []
        assert neighbour in ex.runner.running
        flag.touch()
        assert (await node.ended(ex, neighbour)).state is JobState.COMPLETED


async def test_jobs_get_a_high_oom_score(node: Node) -> None:
    async with node.executor() as ex:
        job = await node.run(ex, script="cat /proc/self/oom_score_adj\n")
        assert job.state is JobState.COMPLETED
        assert node.output(ex, job.id) == "1000\n"


# --- after an executor restart ---------------------------------------------------------------
async def crash(ex: Executor) -> None:
    """What an executor's death leaves: its supervisors gone, its jobs running on."""
    for rj in list(ex.runner.running.values()):
        assert rj.task is not None
        rj.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rj.task
    ex.runner.running.clear()
    await ex.runner.close()
    await ex.heartbeat.deregister()


@pytest.mark.parametrize("mode", MODES)
async def test_a_restarted_executor_cleans_up_an_adopted_job(node: Node, mode: str) -> None:
    m1, m2 = marker(), marker()
    async with node.executor(job_containment=mode) as first:
        job_id = await node.start(first, script=background(m1, m2) + "sleep 600\n")
        await until(lambda: "started" in node.output(first, job_id), "the job's background")
        await crash(first)
    async with node.executor(job_containment=mode) as second:
        assert job_id in second.runner.running and second.runner.running[job_id].adopted
        assert await second.runner.cancel(job_id, 1)
        job = await node.ended(second, job_id)
        assert job.state is JobState.CANCELLED
        assert survivors(second, job_id, m1, m2) == []
        assert leaf_gone(second, job_id)


@pytest.mark.parametrize("mode", MODES)
async def test_a_job_that_ended_while_no_executor_watched_leaves_nothing(node: Node,
                                                                         mode: str) -> None:
    m1, m2 = marker(), marker()
    flag = node.dir / "go"
    async with node.executor(job_containment=mode) as first:
        job_id = await node.start(first, script=background(m1, m2)
                                  + f"until [ -e {flag} ]; do sleep 0.05; done\nexit 0\n")
        await until(lambda: "started" in node.output(first, job_id), "the job's background")
        jobdir = first.runner.jobs_dir / f"{job_id}.1"
        await crash(first)
        flag.touch()
        await until((jobdir / "status").exists, "the job to end")
        # nobody killed the cgroup yet; the subreaper helper did its part on its own
        assert bool(survivors(first, job_id, m1, m2)) is (mode == "cgroup")
    async with node.executor(job_containment=mode) as second:
        job = await node.ended(second, job_id)
        assert job.state is JobState.COMPLETED
        assert survivors(second, job_id, m1, m2) == []
        assert leaf_gone(second, job_id)


@needs_cgroups
async def test_a_job_declared_lost_is_killed_when_an_executor_starts(node: Node) -> None:
    """Its executor died, the cluster gave up on it (NODE_FAIL): the next executor of the node
    kills what is left in its cgroup at start-up."""
    m1, m2 = marker(), marker()
    async with node.executor(job_containment="cgroup") as first:
        job_id = await node.start(first, script=background(m1, m2) + "sleep 600\n")
        await until(lambda: "started" in node.output(first, job_id), "the job's background")
        await crash(first)
        job = await JobStore(node.pool).get(job_id)
        assert job is not None
        await first.lifecycle.finish(job, JobState.NODE_FAIL, reason="worker lost")
        script = str(first.runner.jobs_dir / f"{job_id}.1" / "script")
        assert survivors(first, job_id, m1, m2) and alive_with(script)
    async with node.executor(job_containment="cgroup") as second:
        assert job_id not in second.runner.running
        assert survivors(second, job_id, m1, m2) == []
        assert alive_with(script) == []
        assert leaf_gone(second, job_id)


# --- secrets and privileges -------------------------------------------------------------------
ENVIRON_SCAN = ("cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep '^SCNS_' "
                "| sort -u\necho end-of-scan\n")


async def test_a_job_finds_no_secret_of_its_executor(node: Node, tmp_path: Path) -> None:
    """The executor as a real process (its URLs in its environment), a job scanning every
    process's environment it can read."""
    s = node.settings
    database = s.database_url.rsplit("/", 1)[1]
    with running([start_service("executor", "services.executor", s, tmp_path)]) as [proc]:
        await until(lambda: node.redis.exists(node.keys.worker_lease(s.worker_id)),
                    "the executor to register")
        t = TransitionStore(node.pool)
        job = await t.insert(JobSpec(script=ENVIRON_SCAN), idempotency_key=None)
        assert job is not None
        assert await t.place([(job.id, 1, s.worker_id)])
        assert await ArqDispatcher(node.redis, node.keys).enqueue(
            [Dispatch(worker_id=s.worker_id, job_id=job.id, attempt=1)]) == [True]

        async def finished() -> bool:
            row = await JobStore(node.pool).get(job.id)
            return row is not None and row.state.terminal

        await until(finished, "the job to end", 60)
        out = (s.data_dir / "jobs" / f"{job.id}.1" / "stdout").read_text()
        assert proc.popen.poll() is None, proc.output()
    assert out.endswith("end-of-scan\n") and f"SCNS_JOB_ID={job.id}" in out  # it read its own
    for secret in ("SCNS_DATABASE_URL", "SCNS_REDIS_URL", database, s.redis_url):
        assert secret not in out


def test_a_service_is_not_dumpable_so_its_own_user_cannot_read_its_environment(
    tmp_path: Path
) -> None:
    """The case of an executor that is not root: its job runs as its own user. Two processes
    as nobody with a secret in their environment, one made non-dumpable the way every service
    makes itself at start-up; a third process as nobody reads both."""
    python = PYTHON3 or pytest.skip("needs python3")
    secret = f"postgresql://u:{uuid.uuid4().hex}@db/x"
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from shared import runtime\n"
            "ok = runtime.make_undumpable() if sys.argv[1] == '1' else True\n"
            "print(int(ok), flush=True); sys.stdin.read()\n")
    procs = [subprocess.Popen([python, "-c", code, flag, str(ROOT)], user=NOBODY, group=NOBODY,
                              env={"SCNS_DATABASE_URL": secret}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for flag in ("1", "0")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "1"

        def read_as_nobody(pid: int) -> str:
            return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                   "--clear-groups", "cat", f"/proc/{pid}/environ"],
                                  capture_output=True, text=True, check=False).stdout

        assert secret not in read_as_nobody(procs[0].pid)
        assert secret in read_as_nobody(procs[1].pid)  # what it would be without
    finally:
        for p in procs:
            p.kill()
            p.communicate()


async def test_jobs_run_unprivileged(node: Node) -> None:
    async with node.executor() as ex:
        job = await node.run(ex, user="alice", script="id -u\necho $HOME $USER\n")
        assert job.state is JobState.COMPLETED
        assert node.output(ex, job.id) == f"{NOBODY}\n{pwd.getpwuid(NOBODY).pw_dir} nobody\n"
        jobdir = ex.runner.jobs_dir / f"{job.id}.1"
        st = os.stat(jobdir)
        assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o700)


async def test_run_as_submitter_uses_the_account_of_the_node(node: Node) -> None:
    try:
        daemon = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no 'daemon' account here")
    async with node.executor(run_as_submitter=True) as ex:
        for user, uid in (("daemon", daemon.pw_uid), ("root", NOBODY),
                          (f"no-such-{uuid.uuid4().hex[:6]}", NOBODY)):
            job = await node.run(ex, user=user, script="id -u\n")
            assert (job.state, node.output(ex, job.id)) == (JobState.COMPLETED, f"{uid}\n"), user


async def test_output_files_are_opened_with_the_jobs_rights(node: Node) -> None:
    root_only = node.dir / "root-only"
    root_only.write_text("untouched\n")
    os.chmod(root_only, 0o600)
    etc = Path("/etc") / f"scns-test-{uuid.uuid4().hex}"
    async with node.executor() as ex:
        for target in (etc, root_only):
            job = await node.run(ex, script="echo written\n", stdout_path=str(target))
            assert job.state is JobState.FAILED, target
            assert job.reason is not None and "cannot open the output file" in job.reason
    assert not etc.exists()
    assert root_only.read_text() == "untouched\n"


async def test_a_file_of_someone_else_in_the_job_directory_is_not_shipped(node: Node) -> None:
    """With protected_hardlinks off, a job could hard-link a file it cannot read into its own
    directory as its stdout; a root executor must not ship it (made here by the test, as root,
    so that it does not depend on the sysctl)."""
    secret = node.dir / "secret"
    secret.write_text("not-for-the-log\n")
    flag = node.dir / "linked"
    async with node.executor() as ex:
        job_id = await node.start(ex, script=f"until [ -e {flag} ]; do sleep 0.05; done\n")
        stdout = ex.runner.jobs_dir / f"{job_id}.1" / "stdout"
        await until(stdout.exists, "the wrapper to open the job's stdout")
        stdout.unlink()
        os.link(secret, stdout)
        flag.touch()
        job = await node.ended(ex, job_id)
        assert job.state is JobState.COMPLETED
        text, _, _ = await read_output(node.redis, node.keys, job_id=job_id, attempt=1,
                                       stream="stdout")
    assert "not-for-the-log" not in text
    assert "is not a file of the job's user" in text
