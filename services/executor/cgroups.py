"""Job cgroups: one per job attempt, under the executor's own cgroup, in every hierarchy that
does something for us.

**Where.** The executor's own cgroup in each hierarchy comes from /proc/self/cgroup and the
mounts from /proc/self/mountinfo. Under it, `scns-<worker id>-<hash of the jobs directory>`
holds this executor's jobs, one leaf per attempt named like its job directory,
`<job id>.<attempt>`: a restarted executor of the same worker and data directory finds the
leaves of the jobs it left (and nothing of another executor's: tests run several per host).

**Which hierarchies.**
* cgroup v2 (a pure v2 host, or the `unified` hierarchy of a hybrid one): always the job's
  tracking cgroup, killed at once through `cgroup.kill` (Linux 5.14+). With the `memory` and
  `pids` controllers delegated to us it also carries `memory.max` (with `memory.swap.max` 0)
  and `pids.max`; to enable them, the executor moves itself into `<own>/scns-executor` when its
  own cgroup must have no processes of its own (cgroup v2's rule) and it is the only one there
  (a unit of its own with `Delegate=yes`); else memory is left to the executor's watchdog.
* cgroup v1 `memory` (only for a job with a memory limit): `memory.limit_in_bytes`, and
  `memory.memsw.limit_in_bytes` when swap accounting is on; v1 `pids`: `pids.max`; v1 `freezer`
  only when there is no `cgroup.kill` to kill with.

**Entering.** The wrapper writes its own pid into each leaf's `cgroup.procs` (a shell builtin,
no extra process) before it starts the job, so every process of the job is born inside.

**Ending.** `cgroup.kill` where it exists; else freeze (v1 freezer / v2 `cgroup.freeze`),
SIGKILL every member, thaw, until `cgroup.procs` is empty. Then the leaves are removed.

**Out of memory.** v2 `memory.events` `oom_kill`; v1 `memory.oom_control` `oom_kill` (Linux
4.13+), else `memory.failcnt`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_CGROUP = "/proc/self/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
SELF_LEAF = "scns-executor"  # where the executor moves itself on cgroup v2, when it must
EMPTY_WAIT_S = 10.0  # how long a killed cgroup may take to empty


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One cgroup hierarchy and the executor's own cgroup directory in it."""

    version: int
    controllers: frozenset[str]  # v1: those of the hierarchy (v2: read from the directory)
    own: Path


def _unescape(field: str) -> str:
    """mountinfo escapes blanks and backslashes as octal (\\040)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """(root, mount point, type, super options) of every cgroup and cgroup2 mount."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((_unescape(fields[3]), _unescape(fields[4]), tail[0],
                       frozenset(tail[2].split(","))))
    return mounts


def discover(cgroup_text: str, mountinfo_text: str) -> list[Hierarchy]:
    """The hierarchies this process belongs to that are mounted where we can see them. Pure:
    takes /proc/self/cgroup and /proc/self/mountinfo."""
    mounts = parse_mountinfo(mountinfo_text)
    found: list[Hierarchy] = []
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, names, path = parts
        controllers = frozenset(n for n in names.split(",") if n and not n.startswith("name="))
        v2 = hid == "0" and not names
        if not v2 and not controllers:
            continue  # a named hierarchy (name=systemd): nothing for us
        if path.endswith("/" + SELF_LEAF):  # we moved ourselves there (v2), an earlier time
            path = path[:-len(SELF_LEAF) - 1] or "/"
        for root, point, kind, opts in mounts:
            if (kind == "cgroup2") != v2 or (not v2 and not controllers <= opts):
                continue
            if root not in ("/", path) and not path.startswith(root.rstrip("/") + "/"):
                continue
            rel = path[len(root):] if root != "/" else path
            found.append(Hierarchy(version=2 if v2 else 1, controllers=controllers,
                                   own=Path(point) / rel.lstrip("/")))
            break
    return found


def read_text(path: Path | str) -> str | None:
    """A small kernel file (cgroupfs, /proc): one read, no buffered text layer (this runs a
    few times per job)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode("ascii", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def write_text(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def keyed(text: str | None, key: str) -> int | None:
    """The number after `key` in a flat-keyed cgroup file (memory.events, oom_control)."""
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return None


@dataclass(frozen=True, slots=True)
class Base:
    """This executor's directory in one hierarchy, and what its leaves do."""

    version: int
    path: Path
    memory: bool = False  # limits memory (and counts OOM kills)
    pids: bool = False
    kill: bool = False  # v2 cgroup.kill
    freeze: bool = False  # v1 freezer.state or v2 cgroup.freeze

    @property
    def memory_only(self) -> bool:
        return self.memory and not (self.pids or self.kill or self.freeze or self.version == 2)

    @property
    def dir(self) -> str:
        return str(self.path)  # (pathlib keeps it: no work after the first time)


def _mkdir(path: Path) -> bool:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        log.info("cannot create cgroup %s: %s", path, e.strerror, extra={"event": "cgroup"})
        return False
    return True


def _enable(cg: Path, controllers: Iterable[str]) -> set[str]:
    """Enable controllers for the children of `cg` (v2); those now enabled."""
    wanted = sorted(controllers)
    if wanted:
        with contextlib.suppress(OSError):
            write_text(cg / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    return set((read_text(cg / "cgroup.subtree_control") or "").split()) & set(wanted)


def _setup_v2(h: Hierarchy, name: str) -> Base | None:
    own = h.own
    offered = set((read_text(own / "cgroup.controllers") or "").split()) & {"memory", "pids"}
    base = own / name
    if not _mkdir(base):
        return None
    enabled: set[str] = set()
    if offered:
        enabled = _enable(own, offered)
        alone = (read_text(own / "cgroup.procs") or "").split() == [str(os.getpid())]
        if enabled != offered and alone:
            # "no internal processes": our own cgroup must hold no process to give its
            # children controllers; when we are its only one (a delegated unit of our own),
            # move ourselves into a leaf of it and try again
            me = own / SELF_LEAF
            if _mkdir(me):
                with contextlib.suppress(OSError):
                    write_text(me / "cgroup.procs", str(os.getpid()))
                enabled = _enable(own, offered)
        enabled = _enable(base, enabled)
    return Base(version=2, path=base, memory="memory" in enabled, pids="pids" in enabled,
                kill=(base / "cgroup.kill").exists(), freeze=(base / "cgroup.freeze").exists())


class CgroupTree:
    """The executor's job cgroups. Reading and writing cgroupfs files takes microseconds, so
    it is done on the event loop; only waiting for a killed cgroup to empty sleeps."""

    def __init__(self, bases: list[Base]) -> None:
        self.bases = bases

    @classmethod
    def create(cls, hierarchies: list[Hierarchy], name: str) -> CgroupTree | None:
        """Set up `name` in every useful hierarchy we can write; None when there is none."""
        bases: list[Base] = []
        v2 = next((h for h in hierarchies if h.version == 2 and h.own.is_dir()), None)
        if v2 is not None:
            b = _setup_v2(v2, name)
            if b is not None:
                bases.append(b)
        has = {"memory": any(b.memory for b in bases), "pids": any(b.pids for b in bases),
               "kill": any(b.kill or b.freeze for b in bases)}
        for h in hierarchies:
            if h.version != 1 or not h.own.is_dir():
                continue
            memory = "memory" in h.controllers and not has["memory"]
            pids = "pids" in h.controllers and not has["pids"]
            freeze = "freezer" in h.controllers and not has["kill"]
            if (memory or pids or freeze) and _mkdir(h.own / name):
                bases.append(Base(version=1, path=h.own / name, memory=memory, pids=pids,
                                  freeze=freeze))
                has["memory"] |= memory
                has["pids"] |= pids
                has["kill"] |= freeze
        if not bases:
            return None
        tree = cls(bases)
        atexit.register(tree.close)  # an executor that never reached its own close()
        return tree

    @classmethod
    def for_this_process(cls, name: str) -> CgroupTree | None:
        cg, mi = read_text(Path(PROC_CGROUP)), read_text(Path(MOUNTINFO))
        if cg is None or mi is None:
            return None
        return cls.create(discover(cg, mi), name)

    @property
    def memory(self) -> bool:
        return any(b.memory for b in self.bases)

    @property
    def pids(self) -> bool:
        return any(b.pids for b in self.bases)

    def describe(self) -> str:
        return ", ".join(f"{b.path} (v{b.version}: " + " ".join(
            k for k in ("memory", "pids", "kill", "freeze") if getattr(b, k)) + ")"
                         for b in self.bases)

    def entry_dirs(self) -> list[str]:
        """The directories whose `<leaf>/cgroup.procs` the wrapper writes its pid into (where
        the leaf exists: a memory-only one exists only for a job with a memory limit)."""
        return [str(b.path) for b in self.bases]

    # --- one job -------------------------------------------------------------------------
    def _leaves(self, leaf: str) -> list[tuple[Base, Path]]:
        # os.path on strings: pathlib's joins cost more than the stat itself, several per job
        return [(b, Path(path)) for b in self.bases
                if os.path.isdir(path := os.path.join(b.dir, leaf))]

    async def prepare(self, leaf: str, *, memory_mb: int | None, pids_max: int | None) -> None:
        """Fresh leaves for a job about to start, its limits written; OSError if a limit cannot
        be set (the job must not run without it)."""
        try:
            self._make_leaves(leaf, memory_mb=memory_mb, pids_max=pids_max)
        except FileExistsError:  # left by an earlier cluster on this data directory
            await self.discard(leaf)
            self._make_leaves(leaf, memory_mb=memory_mb, pids_max=pids_max)

    def _make_leaves(self, leaf: str, *, memory_mb: int | None, pids_max: int | None) -> None:
        for b in self.bases:
            if b.memory_only and not memory_mb:
                continue
            path = os.path.join(b.dir, leaf)
            try:
                os.mkdir(path)
            except FileNotFoundError:  # our base was removed as empty meanwhile
                os.mkdir(b.path)
                if b.version == 2:
                    _enable(b.path, [c for c in ("memory", "pids") if getattr(b, c)])
                os.mkdir(path)
            if b.memory and memory_mb:
                limit = str(memory_mb << 20)
                if b.version == 2:
                    write_text(f"{path}/memory.max", limit)
                    with contextlib.suppress(OSError):
                        write_text(f"{path}/memory.swap.max", "0")
                else:
                    write_text(f"{path}/memory.limit_in_bytes", limit)
                    with contextlib.suppress(OSError):  # absent without swap accounting
                        write_text(f"{path}/memory.memsw.limit_in_bytes", limit)
            if b.pids and pids_max:
                write_text(f"{path}/pids.max", str(pids_max))

    def procs(self, leaf: str) -> list[int] | None:
        """The processes in the job's cgroup; None when it has none of ours."""
        for _, path in self._leaves(leaf):
            text = read_text(path / "cgroup.procs")
            if text is not None:
                return [int(p) for p in text.split() if p.isdigit()]
        return None

    def oom_killed(self, leaf: str, *, leaves: list[tuple[Base, Path]] | None = None) -> bool:
        """Did the kernel kill a process of this job for memory?"""
        for b, path in self._leaves(leaf) if leaves is None else leaves:
            if not b.memory:
                continue
            if b.version == 2:
                n = keyed(read_text(path / "memory.events"), "oom_kill")
            else:
                n = keyed(read_text(path / "memory.oom_control"), "oom_kill")
                if n is None:  # before Linux 4.13
                    n = int((read_text(path / "memory.failcnt") or "0").strip() or 0)
            if n:
                return True
        return False

    async def end(self, leaf: str) -> bool:
        """A job's end: everything of it killed, its leaves removed; whether the kernel killed
        one of its processes for memory (the counters outlive the processes). Its leaves are
        looked up once."""
        leaves = self._leaves(leaf)
        await self.kill(leaf, leaves=leaves)
        oom = self.oom_killed(leaf, leaves=leaves)
        await self.remove(leaf, leaves=leaves)
        return oom

    async def kill(self, leaf: str, *, within_s: float = EMPTY_WAIT_S,
                   leaves: list[tuple[Base, Path]] | None = None) -> bool:
        """SIGKILL every process of the job's cgroup and wait until it is empty; False if
        something was still there after `within_s`."""
        leaves = self._leaves(leaf) if leaves is None else leaves
        if not leaves:
            return True
        killer = next((p for b, p in leaves if b.kill), None)
        if killer is not None:
            with contextlib.suppress(OSError):
                write_text(killer / "cgroup.kill", "1")
        deadline = time.monotonic() + within_s
        delay = 0.001
        while True:
            members = [p for _, path in leaves for p in
                       (read_text(path / "cgroup.procs") or "").split()]
            if not members:
                return True
            if time.monotonic() > deadline:
                log.warning("cgroup %s still has %d processes after SIGKILL", leaf,
                            len(members), extra={"event": "cgroup-kill-stuck"})
                return False
            if killer is None:
                self._kill_members(leaves)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def _kill_members(leaves: list[tuple[Base, Path]]) -> None:
        """Without cgroup.kill: freeze (nothing forks meanwhile), SIGKILL all, thaw."""
        frozen = next(((b, p) for b, p in leaves if b.freeze), None)
        if frozen is not None:
            state, (on, off) = ((frozen[1] / "cgroup.freeze", ("1", "0")) if frozen[0].version == 2
                                else (frozen[1] / "freezer.state", ("FROZEN", "THAWED")))
            with contextlib.suppress(OSError):
                write_text(state, on)
        try:
            for _, path in leaves:
                for pid in (read_text(path / "cgroup.procs") or "").split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
        finally:
            if frozen is not None:
                with contextlib.suppress(OSError):
                    write_text(state, off)

    async def remove(self, leaf: str, *, leaves: list[tuple[Base, Path]] | None = None) -> bool:
        """Remove the job's (empty) leaves; False if one stayed."""
        ok = True
        for _, path in self._leaves(leaf) if leaves is None else leaves:
            for attempt in range(20):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or attempt == 19:
                        log.warning("cannot remove cgroup %s: %s", path, e.strerror,
                                    extra={"event": "cgroup-remove-failed"})
                        ok = False
                        break
                    await asyncio.sleep(0.05)
        return ok

    async def discard(self, leaf: str) -> None:
        await self.kill(leaf)
        await self.remove(leaf)

    def leaves(self) -> set[str]:
        """The leaves that exist now (jobs of this executor's, current or left over)."""
        names: set[str] = set()
        for b in self.bases:
            with contextlib.suppress(OSError):
                names.update(e.name for e in os.scandir(b.path) if e.is_dir())
        return names

    # --- the executor's directories ------------------------------------------------------
    def tidy_siblings(self) -> int:
        """Remove empty `scns-*` directories beside ours (executors that are gone; one that
        is alive and idle makes its own again when it starts its next job)."""
        removed = 0
        for b in self.bases:
            with contextlib.suppress(OSError):
                for e in os.scandir(b.path.parent):
                    if e.name.startswith("scns-") and e.name not in (b.path.name, SELF_LEAF) \
                            and e.is_dir(follow_symlinks=False):
                        try:
                            os.rmdir(e.path)
                            removed += 1
                        except OSError:
                            pass  # not empty: someone's running jobs
        return removed

    def close(self) -> None:
        """Remove our directories if no job is left in them."""
        for b in self.bases:
            with contextlib.suppress(OSError):
                os.rmdir(b.path)
