"""What a job's processes consume: sampled while it runs, exact from wait4 when it ends.

Two sources, combined at the end of an attempt (the larger of each wins):

* wait4 on the job's wrapper returns, for the wrapper and every process it (recursively)
  waited for, the exact user and system CPU seconds and the peak RSS of the largest single
  process. That covers a script and the commands it runs, however short-lived. One caveat:
  the kernel counts in the wrapper's own peak RSS the peak of the executor it was spawned
  from, so the figure tells the job's peak only when it is above the executor's (about 50 MB);
  below, it is not used.
* a sample every second of the job's process group, from one pass over /proc: the sum of the
  RSS of its live processes (so a job of several big processes shows their total) and their
  CPU seconds so far. A job adopted after an executor restart is not our child, so this is
  all we have for it.

So a job that stays under about 50 MB and ends within a second may have no peak RSS (None).
A memory cgroup per job (memory.peak) will make the figure exact for every job.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
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


def parse_stat(text: str) -> tuple[int, int, float, float] | None:
    """(process group, RSS in kB, user s, system s) from a /proc/PID/stat line; the user and
    system seconds include the process's waited-for children. The command name may contain
    spaces and parentheses, so fields are counted after its last ')'."""
    end = text.rfind(")")
    if end < 0:
        return None
    fields = text[end + 2:].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime..cstime 14..17, rss 24
    try:
        pgrp = int(fields[2])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        rss_pages = int(fields[21])
    except (IndexError, ValueError):
        return None
    return (pgrp, max(rss_pages, 0) * _PAGE_KB, (utime + cutime) / _TICKS,
            (stime + cstime) / _TICKS)


def sample_groups(pgids: Iterable[int], proc: str = PROC) -> dict[int, Sample]:
    """The live processes of each process group, summed, in one pass over /proc."""
    wanted = set(pgids)
    out = {g: Sample() for g in wanted}
    if not wanted:
        return out
    try:
        entries = os.listdir(proc)
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", encoding="ascii", errors="replace") as f:
                parsed = parse_stat(f.read())
        except OSError:
            continue  # it ended meanwhile
        if parsed is None or parsed[0] not in wanted:
            continue
        s = out[parsed[0]]
        s.rss_kb += parsed[1]
        s.user_s += parsed[2]
        s.system_s += parsed[3]
    return out


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
