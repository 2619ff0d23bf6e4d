from __future__ import annotations

import pytest

from services.cli.directives import DirectiveError, parse_directives, parse_memory, parse_time


@pytest.mark.parametrize(("text", "seconds"), [
    ("10", 600), ("1:30", 90), ("2:00:00", 7200), ("1-0", 86400), ("1-2", 93600),
    ("1-2:30", 95400), ("0-0:0:5", 5), ("UNLIMITED", None), ("infinite", None),
])
def test_slurm_time_formats(text: str, seconds: int | None) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5", "0", "1-x", "0:00"])
def test_bad_times(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_time(text)


@pytest.mark.parametrize(("text", "mb"), [("512", 512), ("512M", 512), ("4G", 4096),
                                         ("1T", 1048576), ("2048K", 2), ("4gb", 4096)])
def test_memory(text: str, mb: int) -> None:
    assert parse_memory(text) == mb


def test_bad_memory() -> None:
    with pytest.raises(DirectiveError):
        parse_memory("lots")


def test_directives_from_the_top_comment_block() -> None:
    script = """#!/bin/bash
#SBATCH --cpus-per-task=4
#SBATCH -t 1:00:00 --mem 2G
#SCNS -J hello --requeue
# a plain comment
#SBATCH --export=A=1,B=two

echo hi
#SBATCH -c 99
"""
    d = parse_directives(script)
    assert (d.cpus, d.time_limit, d.memory_mb, d.name, d.requeue) == (4, 3600, 2048, "hello",
                                                                     True)
    assert d.env == {"A": "1", "B": "two"}
    assert d.warnings == []


def test_ntasks_multiplies_cpus() -> None:
    d = parse_directives("#SBATCH -n 2 -c 3\n")
    assert d.total_cpus == 6


def test_unknown_directives_warn() -> None:
    d = parse_directives("#SBATCH --gres=gpu:1\n#SBATCH --nodes=1\n")
    assert len(d.warnings) == 2
    assert "--gres=gpu:1" in d.warnings[0]


def test_bad_directive_names_the_line() -> None:
    with pytest.raises(DirectiveError, match="line 2"):
        parse_directives("#!/bin/sh\n#SBATCH -c zero\n")
