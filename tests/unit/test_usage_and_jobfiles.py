"""Reading what a job leaves behind (its directory is the job's to change) and what it used."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from services.executor.usage import Sample, combine, parse_stat, sample_groups
from shared.jobfiles import NotRegular, open_regular, read_pids, read_status


@pytest.mark.parametrize(("text", "value", "tampered"), [
    ("0\n", 0, False), ("3\n", 3, False), ("255", 255, False), ("137\n", 137, False),
    ("256\n", None, True), ("99999999999\n", None, True), ("-1\n", None, True),
    ("abc", None, True), ("", None, True), ("1 2\n", None, True), ("²\n", None, True),
    ("0x1\n", None, True), (" 7 \n", 7, False),
])
def test_status_is_parsed_strictly(tmp_path: Path, text: str, value: int | None,
                                   tampered: bool) -> None:
    (tmp_path / "status").write_text(text)
    status = read_status(tmp_path)
    assert (status.value, status.tampered, status.present) == (value, tampered, True)


def test_a_missing_status_is_not_tampered(tmp_path: Path) -> None:
    status = read_status(tmp_path)
    assert (status.present, status.value, status.tampered) == (False, None, False)


@pytest.mark.parametrize(("text", "pids"), [
    ("123 456\n", (123, 456)), ("123\n", (123, None)), ("1 2\n", None), ("0 5", None),
    ("99999999999 5", None), ("a b", None), ("", None), ("1 2 3", None), ("7 x", None),
])
def test_pids_are_parsed_strictly(tmp_path: Path, text: str,
                                  pids: tuple[int, int | None] | None) -> None:
    (tmp_path / "pid").write_text(text)
    assert read_pids(tmp_path) == pids


def test_links_directories_and_fifos_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0\n")
    job = tmp_path / "job"
    job.mkdir()
    (job / "status").symlink_to(secret)
    (job / "pid").mkdir()
    os.mkfifo(job / "stdout")
    assert read_status(job).present is False  # a link is not followed, even to a valid one
    assert read_pids(job) is None
    with pytest.raises(NotRegular):
        open_regular(job, "stdout")  # and opening a FIFO does not wait for a writer
    with pytest.raises(NotRegular):
        open_regular(job, "pid")
    linked = tmp_path / "linked"
    linked.symlink_to(job, target_is_directory=True)
    (job / "ok").write_text("fine")
    with pytest.raises(NotADirectoryError):
        open_regular(linked, "ok")  # nor is a job directory that became a link
    fd = open_regular(job, "ok")
    try:
        assert os.read(fd, 10) == b"fine"
    finally:
        os.close(fd)


def test_parse_stat_counts_fields_after_the_command_name() -> None:
    line = ("4242 (a b) c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 1 0 "
            "12345 10000000 2500 18446744073709551615")
    pgrp, rss_kb, user_s, system_s = parse_stat(line)  # type: ignore[misc]
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    ticks = os.sysconf("SC_CLK_TCK")
    assert pgrp == 4240
    assert rss_kb == 2500 * page_kb
    assert user_s == pytest.approx((250 + 30) / ticks)
    assert system_s == pytest.approx((50 + 20) / ticks)
    assert parse_stat("garbage") is None


def test_sample_groups_sees_this_process_group() -> None:
    mine = os.getpgrp()
    samples = sample_groups([mine, 999_999_999])
    assert samples[mine].rss_kb > 0 and samples[999_999_999].rss_kb == 0


def _ru(maxrss: int, user: float, system: float) -> resource.struct_rusage:
    fields = [0.0] * 16
    fields[0], fields[1], fields[2] = user, system, maxrss
    return resource.struct_rusage(fields)


@pytest.mark.parametrize(("peak", "ru", "spawner", "expected"), [
    # wait4's peak counts only above the executor's own (it is polluted below)
    (Sample(), _ru(200_000, 1.0, 0.5), 50_000, (200_000, 1.0, 0.5)),
    (Sample(), _ru(50_000, 1.0, 0.5), 50_000, (None, 1.0, 0.5)),
    (Sample(rss_kb=30_000), _ru(50_000, 1.0, 0.5), 50_000, (30_000, 1.0, 0.5)),
    # the sampled sum of several processes beats the largest single one
    (Sample(rss_kb=300_000, user_s=0.5), _ru(200_000, 1.0, 0.5), 50_000, (300_000, 1.0, 0.5)),
    # adopted (no wait4): the samples are all there is
    (Sample(rss_kb=10_000, user_s=2.0, system_s=1.0), None, 0, (10_000, 2.0, 1.0)),
    (Sample(), None, 0, (None, None, None)),
])
def test_combine(peak: Sample, ru: resource.struct_rusage | None, spawner: int,
                 expected: tuple[int | None, float | None, float | None]) -> None:
    u = combine(peak, ru, spawner_peak_kb=spawner)
    assert (u.peak_rss_kb, u.cpu_user_s, u.cpu_system_s) == expected


def test_the_spawners_baseline_is_its_own_memory_not_its_parents(tmp_path: Path) -> None:
    """A process started by a big parent (the executor under a 300 MB pytest) reads the
    parent's peak in getrusage(RUSAGE_SELF); the baseline for its children's wait4 peak must be
    its own memory's (VmHWM), else every smaller job's peak RSS is discarded."""
    import subprocess
    import sys

    from services.executor.usage import own_mm_peak_kb

    status = tmp_path / "status"
    status.write_text("Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t   13536 kB\nVmRSS:\t 1 kB\n")
    assert own_mm_peak_kb(str(status)) == 13536
    big = b"x" * (200 << 20)  # this process: 200 MB more
    out = subprocess.run(
        [sys.executable, "-c", "import resource; from services.executor.usage import "
         "own_mm_peak_kb; print(own_mm_peak_kb(), "
         "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        capture_output=True, text=True, check=True)
    own, inherited = (int(x) for x in out.stdout.split())
    assert inherited >= 200 << 10 > own  # the parent's peak shows in ru_maxrss only
    del big
