"""What this worker may offer: the CPUs and memory its cgroup allows, not the host's count.

In a Kubernetes pod with `limits.cpu: 4` on a 96-core node, `os.cpu_count()` says 96 while the
kernel throttles the pod to 4 CPUs' worth of time; we must offer 4. The limits come from cgroup
v2 (`cpu.max`, `memory.max`, walking up the process's cgroup path) or v1
(`cpu.cfs_quota_us`/`cpu.cfs_period_us`, `memory.limit_in_bytes`), intersected with the CPU
affinity mask and physical memory. The parsers are pure and unit-tested.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_NO_LIMIT = 1 << 60  # v1 reports "no limit" as a huge page-aligned number


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    cpus: int
    memory_mb: int


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max`: "max 100000" (no limit) or "<quota> <period>" -> CPUs."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1: cfs_quota_us is -1 when unlimited."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` -> bytes, None when unlimited."""
    value = text.strip()
    if not value or value == "max":
        return None
    n = int(value)
    return None if n >= _V1_NO_LIMIT else n


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; the v2 unified entry is keyed ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def cpus_from_limits(quota_cpus: float | None, affinity: int) -> int:
    """Whole CPUs a job may be promised: a fractional quota rounds down, never below 1."""
    if quota_cpus is None:
        return max(affinity, 1)
    return max(1, min(affinity, math.floor(quota_cpus + 1e-9)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """The cgroup directory of this process and each parent up to the root."""
    parts = [p for p in rel.strip("/").split("/") if p]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    groups = parse_proc_cgroup(proc_cgroup if proc_cgroup is not None
                               else _read(Path("/proc/self/cgroup")) or "")
    limits: list[float] = []
    if "" in groups and (root / "cgroup.controllers").exists():  # v2
        for d in _ancestors(root, groups[""]):
            text = _read(d / "cpu.max")
            value = parse_cpu_max(text) if text else None
            if value is not None:
                limits.append(value)
    else:  # v1
        rel = groups.get("cpu", groups.get("cpuacct", "/"))
        for base in (root / "cpu,cpuacct", root / "cpu"):
            for d in _ancestors(base, rel):
                q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                value = parse_cfs(q, p) if q and p else None
                if value is not None:
                    limits.append(value)
    return min(limits) if limits else None


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int | None:
    groups = parse_proc_cgroup(proc_cgroup if proc_cgroup is not None
                               else _read(Path("/proc/self/cgroup")) or "")
    limits: list[int] = []
    if "" in groups and (root / "cgroup.controllers").exists():
        candidates = [d / "memory.max" for d in _ancestors(root, groups[""])]
    else:
        rel = groups.get("memory", "/")
        candidates = [d / "memory.limit_in_bytes" for d in _ancestors(root / "memory", rel)]
    for path in candidates:
        text = _read(path)
        value = parse_memory_max(text) if text else None
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return psutil.cpu_count(logical=True) or 1


def detect(cpus: int | None = None, memory_mb: int | None = None) -> Capacity:
    """This process's capacity; explicit values (SCNS_WORKER_CPUS / _MEMORY_MB) win."""
    if cpus is None:
        cpus = cpus_from_limits(cgroup_cpu_limit(), affinity_cpus())
    if memory_mb is None:
        physical = psutil.virtual_memory().total
        limit = cgroup_memory_limit()
        memory_mb = min(physical, limit if limit is not None else physical) // (1024 * 1024)
    return Capacity(cpus=cpus, memory_mb=memory_mb)


def default_labels(extra: Mapping[str, str]) -> dict[str, str]:
    """`arch` from platform.machine() plus the configured SCNS_WORKER_LABELS."""
    return {"arch": platform.machine(), **extra}
