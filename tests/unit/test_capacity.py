from __future__ import annotations

from pathlib import Path

import pytest

from shared.capacity import (
    cgroup_cpu_limit,
    cgroup_memory_limit,
    cpus_from_limits,
    default_labels,
    detect,
    parse_cfs,
    parse_cpu_max,
    parse_memory_max,
    parse_proc_cgroup,
)


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000", None), ("200000 100000", 2.0), ("150000 100000\n", 1.5), ("50000", 0.5),
    ("", None),
])
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_parse_cfs() -> None:
    assert parse_cfs("-1", "100000") is None
    assert parse_cfs("400000\n", "100000\n") == 4.0


@pytest.mark.parametrize(("text", "value"), [
    ("max", None), ("1073741824\n", 1 << 30), ("9223372036854771712", None), ("", None),
])
def test_parse_memory_max(text: str, value: int | None) -> None:
    assert parse_memory_max(text) == value


@pytest.mark.parametrize(("quota", "affinity", "cpus"), [
    (None, 8, 8), (2.0, 8, 2), (1.5, 8, 1), (0.5, 8, 1), (16.0, 4, 4), (None, 0, 1),
])
def test_cpus_from_limits(quota: float | None, affinity: int, cpus: int) -> None:
    assert cpus_from_limits(quota, affinity) == cpus


def test_parse_proc_cgroup_v1_and_v2() -> None:
    v1 = "12:memory:/kubepods/pod1\n11:cpu,cpuacct:/kubepods/pod1\n"
    assert parse_proc_cgroup(v1) == {"memory": "/kubepods/pod1", "cpu": "/kubepods/pod1",
                                     "cpuacct": "/kubepods/pod1"}
    assert parse_proc_cgroup("0::/system.slice/x.service\n") == {"": "/system.slice/x.service"}


def test_cgroup_v2_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    pod = tmp_path / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (tmp_path / "kubepods" / "cpu.max").write_text("800000 100000\n")
    (pod / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "kubepods" / "memory.max").write_text("max\n")
    (pod / "memory.max").write_text(str(2 << 30))
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == 4.0
    assert cgroup_memory_limit(tmp_path, "0::/kubepods/pod1\n") == 2 << 30


def test_cgroup_v1(tmp_path: Path) -> None:
    d = tmp_path / "cpu,cpuacct" / "kubepods"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("300000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    m = tmp_path / "memory" / "kubepods"
    m.mkdir(parents=True)
    (m / "memory.limit_in_bytes").write_text(str(512 << 20))
    proc = "4:cpu,cpuacct:/kubepods\n3:memory:/kubepods\n"
    assert cgroup_cpu_limit(tmp_path, proc) == 3.0
    assert cgroup_memory_limit(tmp_path, proc) == 512 << 20


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None
    assert cgroup_memory_limit(tmp_path, "0::/\n") is None


def test_explicit_values_win() -> None:
    cap = detect(cpus=7, memory_mb=1234)
    assert (cap.cpus, cap.memory_mb) == (7, 1234)


def test_detect_on_this_machine_is_sane() -> None:
    cap = detect()
    assert cap.cpus >= 1
    assert cap.memory_mb > 0


def test_default_labels_carry_arch() -> None:
    labels = default_labels({"zone": "a"})
    assert labels["zone"] == "a"
    assert labels["arch"]
