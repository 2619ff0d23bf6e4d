"""How the executor starts a job: interpreter choice, output file patterns, working directory
and the environment (pure: no processes, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.executor.environment import ARRAY_NAMES, job_environment
from services.executor.process import SAME_AS_STDOUT, Launch
from services.executor.scripts import (
    NOT_AN_ARRAY_TASK,
    Names,
    expand,
    has_shebang,
    normalise,
    plan,
    setup_failure,
    shebang,
    short_host,
    sources,
)
from shared.db.jobs import ArrayInfo, Job
from shared.states import JobState

JOBDIR = Path("/data/jobs/42.1")


def job(**kw: Any) -> Job:
    fields: dict[str, Any] = dict(
        id=42, name="train", user="alice", state=JobState.RUNNING, reason=None, priority=0,
        script="echo hi\n", cpus=1, memory_mb=None, time_limit_s=None, env={},
        submit_dir=None, partition=None, requeue=False, dependency=None, attempt=1,
        worker_id="node-1", exit_code=None, signal=None, cancel_requested=False,
        submitted_at=datetime.now(UTC), allocated_at=None, started_at=None, finished_at=None)
    fields.update(kw)
    return Job(**fields)


ARRAY = ArrayInfo(id=40, spec="1-9:2%2", throttle=2, task_count=5, task_min=1, task_max=9,
                  task_step=2)


def element(task: int = 3, **kw: Any) -> Job:
    return job(array_job_id=40, array_task_id=task, array=ARRAY, **kw)


# --- interpreter -----------------------------------------------------------------------------
@pytest.mark.parametrize(("script", "expected"), [
    ("#!/usr/bin/env python3\nprint(1)\n", ("/usr/bin/env", "python3")),
    ("#!/bin/sh\necho\n", ("/bin/sh", "")),
    ("#!/bin/sh", ("/bin/sh", "")),
    ("#! /bin/bash -e \nx\n", ("/bin/bash", "-e")),
    ("#!/bin/bash\r\necho\r\n", ("/bin/bash", "")),
    # Linux passes everything after the interpreter as one argument
    ("#!/usr/bin/env -S python3 -u\n", ("/usr/bin/env", "-S python3 -u")),
    ("#!/usr/bin/perl\t-w  \n", ("/usr/bin/perl", "-w")),
    ("#!python3\n", ("./python3", "")),  # no PATH search: the working directory, as exec
    ("#!\necho\n", None),  # no interpreter named: bash runs it
    ("#!   \n", None),
    ("echo hi\n", None),
    ("", None),
    (" #!/bin/sh\n", None),  # the kernel wants #! as the first two bytes
    ("# !/bin/sh\n", None),
    ("\n#!/bin/sh\n", None),
])
def test_a_shebang_names_the_interpreter_else_bash_runs_it(
    script: str, expected: tuple[str, str] | None
) -> None:
    assert shebang(script) == expected
    assert has_shebang(script) is (expected is not None)
    launch = plan(job(script=script), jobdir=JOBDIR, worker_id="n")
    assert (launch.interpreter, launch.interpreter_arg) == (expected or ("", ""))


def test_crlf_line_ends_are_made_lf() -> None:
    assert normalise("#!/bin/sh\r\necho a\r\necho b\r\n") == "#!/bin/sh\necho a\necho b\n"
    assert normalise("echo a\n") == "echo a\n"
    assert normalise("printf 'a\\rb'\n") == "printf 'a\\rb'\n"  # a lone CR is the script's


# --- filename patterns -----------------------------------------------------------------------
PLAIN = Names(job_id=42, name="train", user="alice", node="node-1")
ELEMENT = Names(job_id=45, array_job_id=40, array_task_id=3, name="train", user="alice",
                node="node-1")


@pytest.mark.parametrize(("pattern", "names", "expected"), [
    ("slurm-%j.out", PLAIN, "slurm-42.out"),
    ("%x-%u-%N.log", PLAIN, "train-alice-node-1.log"),
    ("out-%A_%a.txt", ELEMENT, "out-40_3.txt"),
    ("out-%j.txt", ELEMENT, "out-45.txt"),
    ("out-%A_%a.txt", PLAIN, f"out-42_{NOT_AN_ARRAY_TASK}.txt"),  # Slurm's NO_VAL
    ("%4a-%6j", ELEMENT, "0003-000045"),
    ("%12j", PLAIN, "0000000042"),  # at most 10 digits of padding
    ("%5x", PLAIN, "train"),  # widths do not apply to names
    ("100%%-%j", PLAIN, "100%-42"),
    ("%%j", PLAIN, "%j"),
    ("%%%j", PLAIN, "%42"),
    ("%J.%n.%t", PLAIN, "42.0.0"),
    ("%q-%j", PLAIN, "%q-42"),  # unknown: left alone
    ("50%", PLAIN, "50%"),
    ("no-pattern.txt", PLAIN, "no-pattern.txt"),
    ("lit\\%j.txt", PLAIN, "lit%j.txt"),  # a backslash: taken literally
])
def test_filename_patterns_expand_as_sbatch_does(pattern: str, names: Names,
                                                  expected: str) -> None:
    assert expand(pattern, names) == expected


def test_the_host_name_is_the_short_one() -> None:
    assert short_host("node-1.cluster.local") == "node-1"
    assert short_host("node-1") == "node-1"


# --- where output goes and where the job runs ------------------------------------------------
def test_no_output_options_keep_the_defaults() -> None:
    launch = plan(job(submit_dir="/home/alice"), jobdir=JOBDIR, worker_id="node-1")
    assert launch == Launch()
    assert sources(launch) == {}


def test_output_only_takes_stderr_along() -> None:
    launch = plan(element(stdout_path="out-%j-%a.txt", workdir="/scratch/alice",
                          submit_dir="/home/alice", id=45),
                  jobdir=JOBDIR, worker_id="node-1.example")
    assert launch.stdout == "/scratch/alice/out-45-3.txt"
    assert launch.stderr == SAME_AS_STDOUT
    assert launch.workdir == "/scratch/alice"
    assert sources(launch) == {"stdout": "/scratch/alice/out-45-3.txt"}


def test_error_only_leaves_stdout_in_the_job_directory() -> None:
    launch = plan(job(stderr_path="/logs/%x.err", submit_dir="/home/alice"),
                  jobdir=JOBDIR, worker_id="n")
    assert (launch.stdout, launch.stderr) == ("", "/logs/train.err")
    assert sources(launch) == {"stderr": "/logs/train.err"}


def test_both_in_one_file_is_shipped_once() -> None:
    launch = plan(job(stdout_path="a/../log.txt", stderr_path="log.txt", submit_dir="/w"),
                  jobdir=JOBDIR, worker_id="n")
    assert launch.stderr == SAME_AS_STDOUT
    assert sources(launch) == {"stdout": "/w/a/../log.txt"}


def test_separate_files() -> None:
    launch = plan(job(stdout_path="%j.out", stderr_path="%j.err", submit_dir="/home/alice"),
                  jobdir=JOBDIR, worker_id="n")
    assert sources(launch) == {"stdout": "/home/alice/42.out", "stderr": "/home/alice/42.err"}
    assert launch.workdir == ""  # no --chdir: the submit directory if the worker has it


def test_relative_paths_without_any_directory_are_in_the_job_directory() -> None:
    launch = plan(job(stdout_path="out.txt"), jobdir=JOBDIR, worker_id="n")
    assert launch.stdout == str(JOBDIR / "out.txt")


def test_a_relative_chdir_is_taken_from_the_submit_directory() -> None:
    launch = plan(job(workdir="run1", submit_dir="/home/alice", stdout_path="o"),
                  jobdir=JOBDIR, worker_id="n")
    assert launch.workdir == "/home/alice/run1"
    assert launch.stdout == "/home/alice/run1/o"


def test_setup_failures_say_what_failed() -> None:
    launch = Launch(stdout="/x/o", stderr="/y/e", workdir="/w")
    assert setup_failure("workdir", launch) == "cannot change to the working directory /w"
    assert setup_failure("stdout", launch) == "cannot open the output file /x/o"
    assert setup_failure("stderr", launch) == "cannot open the error file /y/e"


def test_the_wrapper_arguments() -> None:
    argv = Launch(stdout="/o", stderr=SAME_AS_STDOUT, workdir="/w", interpreter="/usr/bin/env",
                  interpreter_arg="python3").argv(JOBDIR)
    assert argv[3:] == ["scns-job", "/o", SAME_AS_STDOUT, "/w", "/usr/bin/env", "python3",
                        str(JOBDIR)]
    # the job directory is last: a job finds its own in /proc/$PPID/cmdline
    assert Launch().argv(JOBDIR)[3:] == ["scns-job", "", "", "", "", "", str(JOBDIR)]


# --- environment -----------------------------------------------------------------------------
def env_of(j: Job, user_env: dict[str, str] | None = None) -> dict[str, str]:
    return job_environment(
        base={"PATH": "/bin"}, user_env=user_env if user_env is not None else dict(j.env),
        job_id=j.id, attempt=j.attempt, cpus=j.cpus, memory_mb=j.memory_mb, name=j.name,
        submit_dir=j.submit_dir, worker_id="node-1", user=j.user, array=j.array,
        array_job_id=j.array_job_id, array_task_id=j.array_task_id)


def test_an_element_sees_its_array() -> None:
    env = env_of(element(task=5, id=47))
    for prefix in ("SCNS", "SLURM"):
        assert env[f"{prefix}_ARRAY_JOB_ID"] == "40"
        assert env[f"{prefix}_ARRAY_TASK_ID"] == "5"
        assert env[f"{prefix}_ARRAY_TASK_COUNT"] == "5"
        assert env[f"{prefix}_ARRAY_TASK_MIN"] == "1"
        assert env[f"{prefix}_ARRAY_TASK_MAX"] == "9"
        assert env[f"{prefix}_ARRAY_TASK_STEP"] == "2"
    assert env["SLURM_JOB_ID"] == env["SCNS_JOB_ID"] == "47"


def test_an_element_without_its_array_record_still_has_its_ids() -> None:
    env = env_of(job(array_job_id=40, array_task_id=7))
    assert env["SLURM_ARRAY_JOB_ID"] == env["SCNS_ARRAY_JOB_ID"] == "40"
    assert env["SLURM_ARRAY_TASK_ID"] == "7"
    assert "SLURM_ARRAY_TASK_COUNT" not in env


def test_a_plain_job_has_no_array_variables_whatever_its_user_sets() -> None:
    forged = dict.fromkeys(ARRAY_NAMES, "9")
    env = env_of(job(), user_env={**forged, "MINE": "1"})
    assert not set(ARRAY_NAMES) & set(env)
    assert env["MINE"] == "1"
    env = env_of(element(task=3), user_env=forged)
    assert env["SLURM_ARRAY_TASK_ID"] == "3"


def test_user_and_node_count() -> None:
    env = env_of(job(user="bob"), user_env={"SLURM_JOB_USER": "root", "SLURM_NNODES": "8"})
    assert env["SCNS_JOB_USER"] == env["SLURM_JOB_USER"] == "bob"
    assert env["SLURM_JOB_NUM_NODES"] == env["SLURM_NNODES"] == "1"
