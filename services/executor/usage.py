"""What a job's processes consume: sampled while it runs, exact from wait4 when it ends.

Two sources, combined at the end of an attempt (the larger of each wins):

* wait4 on the job's wrapper returns, for the wrapper and every process it (recursively)
  waited for, the exact user and system CPU seconds and the peak RSS of the largest single
  process. That covers a script and the commands it runs, however short-lived. One caveat:
  the kernel counts in the wrapper's own peak RSS the peak of the executor it was spawned
  from, so the figure tells the job's peak only when it is above the executor's (about 50 MB);
  below, it is not used.
* a sample every second of the job's processes: the sum of the RSS of its live processes (so a
  job of several big processes shows their total) and their CPU seconds so far. Which are the
  job's: those of its cgroup when it has one (containment.py); else, from one pass over /proc,
  the descendants of its wrapper and the members of its process group. A job adopted after an
  executor restart is not our child, so this is all we have for it. Without a memory cgroup
  the same sample is the memory watchdog's measure.

So a job that stays under about 50 MB and ends within a second may have no peak RSS (None).
A memory cgroup per job (memory.peak) will make the figure exact for every job.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.db.jobs import Usage

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_KB = (os.sysconf("SC_PAGE_SIZE") // 1024) if hasattr(os, "sysconf") else 4
PROC = "/proc"


@dataclass(slots=True)
class Sample:
    rss_kb: int = 0
    user_s: float = 0.0
    system_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stat:
    ppid: int
    pgrp: int
    rss_kb: int
    user_s: float
    system_s: float


def parse(text: str) -> Stat | None:
    """A /proc/PID/stat line; the user and system seconds include the process's waited-for
    children. The command name may contain spaces and parentheses, so fields are counted after
    its last ')'."""
    end = text.rfind(")")
    if end < 0:
        return None
    fields = text[end + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, pgrp 5, utime..cstime 14..17, rss 24
    try:
        ppid, pgrp = int(fields[1]), int(fields[2])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        rss_pages = int(fields[21])
    except (IndexError, ValueError):
        return None
    return Stat(ppid=ppid, pgrp=pgrp, rss_kb=max(rss_pages, 0) * _PAGE_KB,
                user_s=(utime + cutime) / _TICKS, system_s=(stime + cstime) / _TICKS)


def parse_stat(text: str) -> tuple[int, int, float, float] | None:
    """(process group, RSS in kB, user s, system s) from a /proc/PID/stat line."""
    st = parse(text)
    return None if st is None else (st.pgrp, st.rss_kb, st.user_s, st.system_s)


def read_stat(pid: int, proc: str = PROC) -> Stat | None:
    try:
        with open(f"{proc}/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse(f.read())
    except OSError:
        return None  # it ended meanwhile


def scan(proc: str = PROC) -> dict[int, Stat]:
    """Every live process, in one pass over /proc."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return {}
    table: dict[int, Stat] = {}
    for entry in entries:
        if entry.isdigit():
            st = read_stat(int(entry), proc)
            if st is not None:
                table[int(entry)] = st
    return table


def tree(table: Mapping[int, Stat], root: int, pgid: int | None = None) -> set[int]:
    """The descendants of `root` (not itself) and the members of process group `pgid`."""
    kids: dict[int, list[int]] = {}
    for pid, st in table.items():
        kids.setdefault(st.ppid, []).append(pid)
    found: set[int] = set()
    stack = list(kids.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(kids.get(pid, ()))
    if pgid is not None:
        found.update(pid for pid, st in table.items() if st.pgrp == pgid and pid != root)
    return found


def total(stats: Iterable[Stat | None]) -> Sample:
    s = Sample()
    for st in stats:
        if st is not None:
            s.rss_kb += st.rss_kb
            s.user_s += st.user_s
            s.system_s += st.system_s
    return s


def sample_groups(pgids: Iterable[int], proc: str = PROC) -> dict[int, Sample]:
    """The live processes of each process group, summed, in one pass over /proc."""
    wanted = set(pgids)
    if not wanted:
        return {}
    table = scan(proc)
    return {g: total(st for st in table.values() if st.pgrp == g) for g in wanted}


def own_mm_peak_kb(status_path: str = "/proc/self/status") -> int:
    """The peak RSS of this process's own memory since its exec (VmHWM): what a child it
    spawns (vfork, then exec) starts its wait4 peak from. Not getrusage(RUSAGE_SELF), whose
    ru_maxrss also carries the peak of whatever this process was exec'd from: an executor
    started by a 300 MB parent would read 300 MB there and discard every job's figure below."""
    try:
        with open(status_path, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def job_peak_kb(ru: resource.struct_rusage | None, spawner_peak_kb: int) -> int | None:
    """The largest single process's peak RSS from wait4, when it tells the job's (above the
    spawner's own: see the module docstring)."""
    if ru is None or ru.ru_maxrss <= spawner_peak_kb:
        return None
    return int(ru.ru_maxrss)


def combine(peak: Sample, ru: resource.struct_rusage | None, *, spawner_peak_kb: int = 0
            ) -> Usage:
    """An attempt's usage from its sampled peak and, when we reaped it, its wait4 usage (whose
    peak RSS is the job's only above `spawner_peak_kb`: see the module docstring)."""
    rss = peak.rss_kb or None
    if ru is not None and ru.ru_maxrss > spawner_peak_kb:
        rss = max(int(ru.ru_maxrss), peak.rss_kb)
    if ru is None:
        if peak.user_s == 0 and peak.system_s == 0:
            return Usage(peak_rss_kb=rss)
        return Usage(peak_rss_kb=rss, cpu_user_s=round(peak.user_s, 3),
                     cpu_system_s=round(peak.system_s, 3))
    return Usage(peak_rss_kb=rss, cpu_user_s=round(max(ru.ru_utime, peak.user_s), 3),
                 cpu_system_s=round(max(ru.ru_stime, peak.system_s), 3))
