"""How one job is started: its script file, working directory and output files. Pure.

* **Interpreter.** A script whose first line starts with `#!` runs under that interpreter,
  exactly as the kernel would run `./script`: `interpreter [one optional argument] script`,
  split the way Linux splits the line (`shebang`). Anything else runs under
  `bash --noprofile --norc` as before. The script file is written executable (0700), but it is
  not exec'd itself: a file just written can still be open for writing in a process another
  thread is spawning at that moment (until that process execs), and exec'ing it then fails with
  ETXTBSY ("Text file busy"; seen a few times in thousands under load). Running the interpreter
  has no such race, takes the same one exec, and works on a data directory mounted noexec.
  CRLF line ends are made LF when the file is written (a `#!/bin/sh\\r` line would otherwise
  name an interpreter that does not exist, and bash chokes on `\\r` too).
* **Working directory.** `--chdir` (a relative one is taken from the submit directory, as
  sbatch does) must exist on the worker, or the job fails; without it the job runs in its submit
  directory when the worker has it, else in its job directory.
* **Output files.** `--output` / `--error` are Slurm filename patterns (`expand`), relative to
  the working directory the job asked for (`--chdir`, else the submit directory, else the job
  directory). With only `--output`, stderr goes to the same file; with only `--error`, stdout
  stays in the default `$jobdir/stdout`. The wrapper opens (creates or appends to) them with
  the job's own permissions; a file it cannot open fails the job before it starts.
* **Shipping.** The log API serves what the executor ships to Redis (shared/output.py). A job
  writes each stream to exactly one file, and the executor ships from that file: the job's own
  `--output` / `--error` file where it has one (services/executor/output.py reads it), else
  `$jobdir/stdout|stderr`. No second copy and no tee process: the log shows the file's bytes.
  When stdout and stderr share a file, it is shipped as stdout and stderr stays empty. A job
  that never started (no --chdir directory, a file that would not open) is FAILED with the
  reason, and its log is the job directory's, where the wrapper wrote the shell's error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.executor.process import SAME_AS_STDOUT, Launch

if TYPE_CHECKING:
    from shared.db.jobs import Job

# What Slurm writes for %a in a job that is not an array element (NO_VAL: 0xfffffffe); %A is
# then the job's own id (slurmstepd's fname.c).
NOT_AN_ARRAY_TASK = 4294967294
MAX_WIDTH = 10  # Slurm pads numbers to at most 10 digits (%12j pads to 10)
_SPEC = re.compile(r"%(\d*)([%A-Za-z])")


def shebang(script: str) -> tuple[str, str] | None:
    """(interpreter, optional argument) of a `#!` first line, as Linux reads it: blanks after
    `#!` skipped, the interpreter up to the next blank, the rest (trimmed) one argument. An
    interpreter without a slash is looked up where the kernel would, in the working directory.
    None without `#!` or with no interpreter named (the kernel refuses that: bash runs it)."""
    if not script.startswith("#!"):
        return None
    end = script.find("\n")
    line = (script[2:] if end < 0 else script[2:end]).removesuffix("\r").strip(" \t")
    if not line:
        return None
    cut = min((i for i in (line.find(" "), line.find("\t")) if i >= 0), default=len(line))
    interpreter, arg = line[:cut], line[cut:].strip(" \t")
    if "/" not in interpreter:
        interpreter = "./" + interpreter
    return interpreter, arg


def has_shebang(script: str) -> bool:
    return shebang(script) is not None


def normalise(script: str) -> str:
    """The script as it is written to the job's file: CRLF line ends made LF."""
    return script.replace("\r\n", "\n") if "\r\n" in script else script


@dataclass(frozen=True, slots=True, kw_only=True)
class Names:
    """What a filename pattern can name."""

    job_id: int
    array_job_id: int | None = None
    array_task_id: int | None = None
    name: str = ""
    user: str = ""
    node: str = ""


def expand(pattern: str, names: Names) -> str:
    """Expand an sbatch filename pattern.

    `%j` (and `%J`) the job id, `%A` the array's id (the job's own id outside an array), `%a`
    the array index (4294967294 outside an array), `%x` the job name, `%u` the user, `%N` the
    worker's short host name, `%n` / `%t` the node and task index (always 0 here), `%%` a
    literal `%`. A width (`%4a`) zero-pads numbers, up to 10 digits; it is ignored for names.
    Any other `%` sequence is left as it is; a pattern with a backslash is taken literally,
    backslashes removed (both as Slurm does)."""
    if "\\" in pattern:
        return pattern.replace("\\", "")
    if "%" not in pattern:
        return pattern
    element = names.array_task_id is not None
    numbers = {
        "j": names.job_id, "J": names.job_id,
        "A": names.array_job_id if element and names.array_job_id is not None
        else names.job_id,
        "a": names.array_task_id if element else NOT_AN_ARRAY_TASK,
        "n": 0, "t": 0,
    }
    words = {"x": names.name, "u": names.user, "N": names.node}

    def one(m: re.Match[str]) -> str:
        width, spec = m.group(1), m.group(2)
        if spec == "%":
            return "%" if not width else m.group(0)
        if spec in numbers:
            return str(numbers[spec]).zfill(min(int(width or 0), MAX_WIDTH))
        if spec in words:
            return words[spec]
        return m.group(0)

    return _SPEC.sub(one, pattern)


def short_host(worker_id: str) -> str:
    return worker_id.split(".", 1)[0] or worker_id


def working_dir(job: Job) -> str:
    """The directory `--chdir` asks for ("" when it asks for none)."""
    wd = job.workdir or ""
    if wd and not os.path.isabs(wd) and job.submit_dir and os.path.isabs(job.submit_dir):
        wd = os.path.join(job.submit_dir, wd)
    return wd


def plan(job: Job, *, jobdir: Path, worker_id: str) -> Launch:
    """How the wrapper starts this job."""
    interpreter, arg = shebang(job.script) or ("", "")
    wd = working_dir(job)
    if not job.stdout_path and not job.stderr_path:
        return Launch(workdir=wd, interpreter=interpreter, interpreter_arg=arg)
    base = next((d for d in (wd, job.submit_dir) if d and os.path.isabs(d)), str(jobdir))
    names = Names(job_id=job.id, array_job_id=job.array_job_id,
                  array_task_id=job.array_task_id, name=job.name, user=job.user,
                  node=short_host(worker_id))

    def path(pattern: str | None) -> str:
        if not pattern:
            return ""
        p = expand(pattern, names)
        return p if os.path.isabs(p) else os.path.join(base, p)

    out, err = path(job.stdout_path), path(job.stderr_path)
    if out and (not err or os.path.normpath(err) == os.path.normpath(out)):
        err = SAME_AS_STDOUT
    return Launch(stdout=out, stderr=err, workdir=wd, interpreter=interpreter,
                  interpreter_arg=arg)


def sources(launch: Launch) -> dict[str, str]:
    """The job's own files its streams are shipped from (a stream not named here is shipped
    from the job directory; stderr sharing stdout's file is not shipped on its own)."""
    found: dict[str, str] = {}
    if launch.stdout:
        found["stdout"] = launch.stdout
    if launch.stderr and launch.stderr != SAME_AS_STDOUT:
        found["stderr"] = launch.stderr
    return found


def setup_failure(error: str, launch: Launch) -> str:
    """The reason a job the wrapper could not set up failed (error: process.SETUP_ERRORS)."""
    if error == "workdir":
        return f"cannot change to the working directory {launch.workdir}"
    if error == "cgroup":
        return "could not put the job in its cgroup"
    if error == "stdout":
        return f"cannot open the output file {launch.stdout or '(the job directory)'}"
    return f"cannot open the error file {launch.stderr or '(the job directory)'}"
