"""#SBATCH / #SCNS directives, checked against what sbatch(1) documents for each option."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.cli.directives import (
    TIME_FORMS,
    DirectiveError,
    parse_directives,
    parse_memory,
    parse_partitions,
    parse_time,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10", 600), ("1:30", 90), ("2:00:00", 7200), ("1-0", 86400), ("1-2", 93600),
    ("1-2:30", 95400), ("0-0:0:5", 5), ("90:00", 5400), ("UNLIMITED", None),
    ("infinite", None), ("-1", None),
    # "A time limit of zero requests that no time limit be imposed."
    ("0", None), ("0:00", None), ("0-0", None),
])
def test_slurm_time_formats(text: str, seconds: int | None) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5", "1-x", "1-2:3:4:5", "1.5", "1h",
                                  "-1-2", "1:", ":30"])
def test_bad_times_name_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_time(text)
    assert str(e.value) == f"--time={text}: expected {TIME_FORMS}"


def test_bad_time_message_is_the_ux_one() -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#SBATCH --time=banana\n")
    assert str(e.value) == ("line 1: --time=banana: expected minutes, MM:SS, HH:MM:SS, D-HH, "
                            "D-HH:MM or D-HH:MM:SS")


@pytest.mark.parametrize(("text", "mb"), [
    ("512", 512), ("512M", 512), ("4G", 4096), ("1T", 1048576), ("2048K", 2), ("4gb", 4096),
    ("1K", 1), ("1025K", 2),  # str_to_mbytes: kilobytes round *up* to whole megabytes
])
def test_memory(text: str, mb: int) -> None:
    assert parse_memory(text) == mb


@pytest.mark.parametrize("text", ["lots", "", "4X", "4GG", "512B", "4 G", "1.5G", "-1", "0"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(DirectiveError, match="--mem="):
        parse_memory(text)


# One directive line, the Directives attribute it sets, and the value sbatch(1) gives it. Each
# group follows the sbatch man page statement quoted above it.
DOCUMENTED: list[tuple[str, str, Any]] = [
    # -t, --time: 'Acceptable time formats include "minutes", "minutes:seconds",
    # "hours:minutes:seconds", "days-hours", "days-hours:minutes" and
    # "days-hours:minutes:seconds".'  (kept in seconds)
    ("#SBATCH --time=30", "time_limit", 30 * 60),
    ("#SBATCH --time=30:15", "time_limit", 30 * 60 + 15),
    ("#SBATCH --time=2:30:00", "time_limit", 2 * 3600 + 30 * 60),
    ("#SBATCH --time=1-12", "time_limit", 86400 + 12 * 3600),
    ("#SBATCH --time=1-12:30", "time_limit", 86400 + 12 * 3600 + 30 * 60),
    ("#SBATCH --time=1-12:30:15", "time_limit", 86400 + 12 * 3600 + 30 * 60 + 15),
    ("#SBATCH --time 0-6", "time_limit", 6 * 3600),
    ("#SBATCH -t 90", "time_limit", 90 * 60),
    ("#SBATCH -t 00:05:00", "time_limit", 300),
    ("#SBATCH -t45", "time_limit", 45 * 60),
    # --mem: "Default units are megabytes. Different units can be specified using the suffix
    # [K|M|G|T]."  (sbatch's str_to_mbytes also takes a B after the unit and rounds K up)
    ("#SBATCH --mem=512", "memory_mb", 512),
    ("#SBATCH --mem=512M", "memory_mb", 512),
    ("#SBATCH --mem=512MB", "memory_mb", 512),
    ("#SBATCH --mem=4G", "memory_mb", 4096),
    ("#SBATCH --mem=4GB", "memory_mb", 4096),
    ("#SBATCH --mem=8g", "memory_mb", 8192),
    ("#SBATCH --mem 2048K", "memory_mb", 2),
    ("#SBATCH --mem=1500KB", "memory_mb", 2),
    ("#SBATCH --mem=1T", "memory_mb", 1024 * 1024),
    ("#SBATCH --mem=1TB", "memory_mb", 1024 * 1024),
    # --mem-per-cpu: "Minimum memory required per usable allocated CPU. Default units are
    # megabytes."  (the job's memory is that times its CPUs)
    ("#SBATCH --mem-per-cpu=2G", "memory_mb", 2048),
    ("#SBATCH -c 4 --mem-per-cpu=1G", "memory_mb", 4096),
    ("#SBATCH -n 2 -c 3 --mem-per-cpu=100", "memory_mb", 600),
    # -a, --array: 'Multiple values may be specified using a comma separated list and/or a range
    # of values with a "-" separator. For example, "--array=0-15" or "--array=0,6,16-32". A step
    # function can also be specified with a suffix containing a colon and number. For example,
    # "--array=0-15:4" is equivalent to "--array=0,4,8,12". A maximum number of simultaneously
    # running tasks from the job array may be specified using a "%" separator. For example
    # "--array=0-15%4" will limit the number of simultaneously running tasks from this job
    # array to 4.'  (a trailing "# comment" is not part of the value)
    ("#SBATCH --array=0-15", "array", "0-15"),
    ("#SBATCH --array=0,6,16-32", "array", "0,6,16-32"),
    ("#SBATCH --array=0-15:4", "array", "0-15:4"),
    ("#SBATCH --array=0-15%4", "array", "0-15%4"),
    ("#SBATCH --array 1,3,5,7", "array", "1,3,5,7"),
    ("#SBATCH -a 1-7:2", "array", "1-7:2"),
    ("#SBATCH -a0-999%8", "array", "0-999%8"),
    ("#SBATCH --array=0-99:2%8  # every other index, 8 at a time", "array", "0-99:2%8"),
    # -J, --job-name=<jobname>; values are read like shell words, so quotes group them
    ("#SBATCH --job-name=hello", "name", "hello"),
    ('#SBATCH --job-name="my job"', "name", "my job"),
    ("#SBATCH -J 'sweep 2'", "name", "sweep 2"),
    ("#SBATCH -J hello # the greeting", "name", "hello"),
    ("#SCNS --job-name hello", "name", "hello"),
    # -o, --output=<filename_pattern> / -e, --error=<filename_pattern>: kept as written
    # (%j job id, %A array job id, %a array index are filled in later)
    ("#SBATCH -o slurm-%A_%a.out", "output", "slurm-%A_%a.out"),
    ('#SBATCH --output="logs/run %j.out"', "output", "logs/run %j.out"),
    ("#SBATCH -e err-%j.log", "error", "err-%j.log"),
    ("#SBATCH --error=err-%j.log", "error", "err-%j.log"),
    # -D, --chdir=<directory>
    ("#SBATCH -D /scratch/run", "chdir", "/scratch/run"),
    ("#SBATCH --chdir=/scratch/run", "chdir", "/scratch/run"),
    # -c, --cpus-per-task=<ncpus>; -n, --ntasks=<number>
    ("#SBATCH -c 8", "cpus", 8),
    ("#SBATCH --cpus-per-task=8", "cpus", 8),
    ("#SBATCH -c8", "cpus", 8),
    ("#SBATCH -n 4", "ntasks", 4),
    ("#SBATCH --ntasks=4", "ntasks", 4),
    ("#SBATCH --ntasks-per-node=3", "ntasks", 3),
    # --nice[=adjustment]: "With no adjustment value the scheduling priority is decreased by
    # 100."
    ("#SBATCH --nice", "nice", 100),
    ("#SBATCH --nice=10", "nice", 10),
    # -d, --dependency=<dependency_list>, e.g. "afterok:job_id[:jobid...]", "," all of them
    ("#SBATCH -d afterok:12", "dependency", "afterok:12"),
    ("#SBATCH --dependency=afterany:12:13,afterok:14_2", "dependency",
     "afterany:12:13,afterok:14_2"),
    ("#SBATCH --dependency singleton", "dependency", "singleton"),
    # -p, --partition; -H, --hold; --requeue / --no-requeue; --priority=<value>
    ("#SBATCH -p default", "partition", "default"),
    ("#SBATCH --partition=default", "partition", "default"),
    ("#SBATCH -H", "hold", True),
    ("#SBATCH --hold", "hold", True),
    ("#SBATCH --requeue", "requeue", True),
    ("#SBATCH --no-requeue", "requeue", False),
    ("#SBATCH --priority=5", "priority", 5),
    # -b, --begin=<time>: "now+1hour", "HH:MM", ISO dates
    ("#SBATCH --begin=now+1hour", "begin_at", datetime(2026, 11, 23, 13, 0, tzinfo=UTC)),
    ("#SBATCH -b 2026-11-24T02:30Z", "begin_at", datetime(2026, 11, 24, 2, 30, tzinfo=UTC)),
    # --export={[ALL,]<environment_variables>|ALL|NONE}: 'Environment variable names may be
    # specified to propagate the current value (e.g. "--export=EDITOR") or specific values may
    # be exported (e.g. "--export=EDITOR=/bin/emacs")'
    ("#SBATCH --export=ALL,FOO=bar", "env", {"FOO": "bar"}),
    ("#SBATCH --export=ALL,FOO=bar", "export_mode", "ALL"),
    ("#SBATCH --export=NONE", "export_mode", "NONE"),
    ("#SBATCH --export=EDITOR", "export_names", ["EDITOR"]),
    ("#SBATCH --export=EDITOR=/bin/emacs", "env", {"EDITOR": "/bin/emacs"}),
    ("#SBATCH --export EDITOR,PAGER=less", "export_names", ["EDITOR"]),
]


@pytest.mark.parametrize(("line", "attr", "expected"), DOCUMENTED,
                         ids=[f"{line[8:]}->{attr}" for line, attr, _ in DOCUMENTED])
def test_documented_directive_forms(line: str, attr: str, expected: Any) -> None:
    d = parse_directives("#!/bin/bash\n" + line + "\nsrun ./work\n", now=NOW)
    assert getattr(d, attr) == expected
    assert d.warnings == []


def test_the_table_is_large_enough() -> None:
    assert len(DOCUMENTED) >= 40


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


def test_parsing_stops_at_the_first_command() -> None:
    script = ("#!/bin/bash\n\n#SBATCH -c 2\n   \n# comment\nmodule load x\n#SBATCH -c 8\n"
              "#SBATCH --bogus-option\n#SBATCH --gres=gpu:1\n")
    d = parse_directives(script)
    assert d.cpus == 2  # nothing after `module load x` is read, not even the errors
    assert d.warnings == []


def test_a_script_without_directives() -> None:
    d = parse_directives("#!/bin/sh\necho hi\n")
    assert d.cpus is None and d.array is None and d.env == {} and d.warnings == []


@pytest.mark.parametrize("line", ["# SBATCH -c 4", "##SBATCH -c 4", "#sbatch -c 4",
                                  "#SBATCHX -c 4", "# SCNS --gres=gpu:1"])
def test_lookalike_comments_are_not_directives(line: str) -> None:
    d = parse_directives(f"#!/bin/bash\n{line}\n#SBATCH -n 2\n")
    assert (d.cpus, d.ntasks) == (None, 2)
    assert d.warnings == []


def test_an_indented_directive_is_a_comment_as_in_sbatch() -> None:
    # opt.c compares "#SBATCH" with the start of the line; an indented one is only a comment,
    # so it neither applies nor stops the reading. It gets a warning, as it was likely meant.
    d = parse_directives("#!/bin/bash\n  #SBATCH -c 4\n\t#SBATCH --gres=gpu:1\n#SBATCH -n 2\n")
    assert (d.cpus, d.ntasks) == (None, 2)
    assert len(d.warnings) == 2
    assert d.warnings[0].startswith("line 2: an indented #SBATCH is not a directive")


def test_crlf_scripts() -> None:
    script = ("#!/bin/bash\r\n#SBATCH -J crlf\r\n#SBATCH --time=10 --mem=1G\r\n"
              "#SBATCH --output=out.log\r\n\r\necho hi\r\n#SBATCH -c 9\r\n")
    d = parse_directives(script)
    assert (d.name, d.time_limit, d.memory_mb, d.output, d.cpus) == ("crlf", 600, 1024,
                                                                     "out.log", None)


def test_last_option_wins_and_flags_group() -> None:
    d = parse_directives("#SBATCH -c 2\n#SBATCH -c 3 -Hc5\n#SBATCH --export=A=1\n"
                         "#SBATCH --export=B=2\n")
    assert (d.cpus, d.hold, d.env) == (5, True, {"B": "2"})


def test_ntasks_multiplies_cpus() -> None:
    d = parse_directives("#SBATCH -n 2 -c 3\n")
    assert d.total_cpus == 6


def test_ntasks_wins_over_ntasks_per_node() -> None:
    assert parse_directives("#SBATCH --ntasks-per-node=4 -n 2\n").ntasks == 2


def test_mem_per_cpu_follows_the_cpus_the_job_gets() -> None:
    d = parse_directives("#SBATCH -c 2 --mem-per-cpu=512\n")
    assert (d.mem_per_cpu_mb, d.memory_mb, d.memory_for(8)) == (512, 1024, 4096)
    assert parse_directives("#SBATCH --mem=3G\n").memory_for(8) == 3072


def test_mem_and_mem_per_cpu_are_exclusive() -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#SBATCH --mem=1G\n#SBATCH --mem-per-cpu=1G\n")
    assert str(e.value).startswith("line 2: --mem-per-cpu and --mem (line 1) are mutually "
                                   "exclusive")


@pytest.mark.parametrize("value", ["1", "1-1"])
def test_one_node_is_fine(value: str) -> None:
    d = parse_directives(f"#SBATCH --nodes={value}\n#SBATCH -N {value}\n")
    assert d.warnings == []


@pytest.mark.parametrize("line", ["#SBATCH --nodes=2", "#SBATCH -N 2", "#SBATCH -N 2-4",
                                  "#SBATCH --nodes=1-2"])
def test_several_nodes_cannot_be_honoured(line: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#!/bin/bash\n" + line + "\n")
    assert str(e.value).startswith("line 2: ")
    assert str(e.value).endswith("cannot be honoured: jobs run on one node")


@pytest.mark.parametrize(("line", "shown"), [
    ("#SBATCH --gres=gpu:1", "--gres=gpu:1"),
    ("#SBATCH --gres=gpu:tesla:2", "--gres=gpu:tesla:2"),
    ("#SBATCH --gpus=2", "--gpus=2"),
    ("#SBATCH -G 1", "-G 1"),
    ("#SBATCH --gpus-per-node=4", "--gpus-per-node=4"),
    ("#SBATCH --gpus-per-task 1", "--gpus-per-task=1"),
])
def test_gpu_requests_cannot_be_honoured(line: str, shown: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#!/bin/bash\n#SBATCH -c 2\n" + line + "\n")
    assert str(e.value) == f"line 3: {shown} cannot be honoured: this cluster has no GPUs"


def test_gres_none_is_no_request() -> None:
    assert parse_directives("#SBATCH --gres=none\n").warnings == []


@pytest.mark.parametrize(("line", "partition"), [
    ("#SBATCH -p gpu", "gpu"),  # whether it exists is the gateway's to say
    ("#SBATCH --partition=big,small", "big,small"),
    ("#SBATCH -p big,small,big", "big,small"),
    ("#SBATCH --partition=arm.v8_a-1", "arm.v8_a-1"),
    ("#SBATCH -p " + "p" * 64, "p" * 64),
])
def test_partitions_pass_through(line: str, partition: str) -> None:
    assert parse_directives(line + "\n").partition == partition


@pytest.mark.parametrize(("line", "words"), [
    ("#SBATCH -p big,,small", "-p big,,small: an empty partition name"),
    ("#SBATCH --partition=big,", "--partition=big,: an empty partition name"),
    ("#SBATCH -p 'big/x'", "-p big/x: 'big/x' is not a partition name"),
    ("#SBATCH -p " + "p" * 65, "is not a partition name"),
])
def test_a_malformed_partition_list_is_refused(line: str, words: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives(line + "\n")
    assert str(e.value).startswith("line 1: ") and words in str(e.value)
    assert "comma-separated" in str(e.value)


def test_parse_partitions_names_the_option() -> None:
    assert parse_partitions(" big , small ") == "big,small"
    with pytest.raises(DirectiveError, match=r"^--partition=a b: 'a b' is not a partition"):
        parse_partitions("a b")


def test_admin_options_warn_once_each() -> None:
    script = """#!/bin/bash
#SBATCH -A physics
#SBATCH --account=physics
#SBATCH -q normal --qos=high
#SBATCH --mail-type=END,FAIL
#SBATCH --mail-user=me@example.org
#SBATCH --open-mode=append
#SBATCH --comment="nightly run"
#SBATCH -c 2
"""
    d = parse_directives(script)
    assert d.cpus == 2
    assert len(d.warnings) == 8
    for warning, start in zip(d.warnings, [
            "line 2: -A physics ignored", "line 3: --account=physics ignored",
            "line 4: -q normal ignored", "line 4: --qos=high ignored",
            "line 5: --mail-type=END,FAIL ignored", "line 6: --mail-user=me@example.org ignored",
            "line 7: --open-mode=append ignored", "line 8: --comment='nightly run' ignored"],
            strict=True):
        assert warning.startswith(start)


@pytest.mark.parametrize(("line", "message"), [
    ("#SBATCH --exclusive", "line 2: unknown option --exclusive"),
    ("#SBATCH -c 2 --cpus-per-tsk=2", "line 2: unknown option --cpus-per-tsk (did you mean "
                                      "--cpus-per-task?)"),
    ("#SBATCH -x node1", "line 2: unknown option -x"),
    ("#SCNS --frobnicate", "line 2: unknown option --frobnicate"),
])
def test_unknown_options_are_errors(line: str, message: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#!/bin/bash\n" + line + "\n")
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(("line", "message"), [
    ("#SBATCH --time=banana", f"--time=banana: expected {TIME_FORMS}"),
    ("#SBATCH -t 1:2:3:4", f"-t 1:2:3:4: expected {TIME_FORMS}"),
    ("#SBATCH --mem=lots", "--mem=lots: expected megabytes, or a size with a K, M, G or T"),
    ("#SBATCH --mem-per-cpu=4X", "--mem-per-cpu=4X: expected megabytes"),
    ("#SBATCH -c zero", "-c zero: expected a positive integer"),
    ("#SBATCH --ntasks=0", "--ntasks=0: expected a positive integer"),
    ("#SBATCH --array=5-1", "--array=5-1: array range '5-1' ends before it starts"),
    ("#SBATCH -a 0-9%0", "-a 0-9%0: array limit '%0' must be a positive integer"),
    ("#SBATCH --dependency=afterwards:1", "--dependency=afterwards:1: unknown dependency type"),
    ("#SBATCH --nice=lots", "--nice=lots: expected an integer adjustment"),
    ("#SBATCH --nice 5", "unexpected argument '5'"),
    ("#SBATCH --export=1BAD", "--export=1BAD: '1BAD' is not a variable name; expected ALL, "
                              "NONE, NAME or NAME=value"),
    ("#SBATCH --export=ALL,NONE", "--export=ALL,NONE: ALL and NONE contradict"),
    ("#SBATCH -N two", "-N two: expected a node count"),
    ("#SBATCH --open-mode=sideways", "--open-mode=sideways: expected append or truncate"),
    ("#SBATCH --begin=banana", "bad begin time 'banana' for --begin; use now"),
    ("#SBATCH --priority=high", "--priority must be an integer, got 'high'"),
    ("#SBATCH --time", "--time needs a value"),
    ("#SBATCH -J", "-J needs a value"),
    ("#SBATCH --hold=yes", "--hold takes no value"),
    ("#SBATCH --job-name=", "--job-name='': expected a value"),
    ('#SBATCH -J "unclosed', "unmatched quote in '#SBATCH -J \"unclosed'"),
    ("#SBATCH --wrap=hostname", "--wrap is not a directive"),
    ("#SBATCH -c 2 stray", "unexpected argument 'stray'"),
])
def test_malformed_values_name_line_option_and_forms(line: str, message: str) -> None:
    with pytest.raises(DirectiveError) as e:
        parse_directives("#!/bin/bash\n#SBATCH -n 1\n" + line + "\n", now=NOW)
    assert str(e.value).startswith("line 3: " + message)


def test_export_all_with_a_value() -> None:
    d = parse_directives("#SBATCH --export=ALL,FOO=bar\n")
    assert (d.env, d.export_mode, d.export_names) == ({"FOO": "bar"}, "ALL", [])


def test_export_names_are_copied_later() -> None:
    d = parse_directives("#SBATCH --export=HOME,PATH,FOO=a=b,HOME\n")
    assert (d.env, d.export_mode, d.export_names) == ({"FOO": "a=b"}, None, ["HOME", "PATH"])


def test_bad_directive_names_the_line() -> None:
    with pytest.raises(DirectiveError, match="line 2"):
        parse_directives("#!/bin/sh\n#SBATCH -c zero\n")
