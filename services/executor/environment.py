"""The environment a job sees: clean, plus the user's variables, plus ours. Pure.

Nothing of the executor's own environment reaches a job but PASSTHROUGH: never its secrets
(SCNS_DATABASE_URL, SCNS_REDIS_URL) nor any other SCNS_* setting. A job that runs as another
user than the executor's gets that account's HOME, USER and LOGNAME instead of the executor's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.db.jobs import ArrayInfo

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Carried over from the executor's own environment (never its secrets or SCNS_* settings).
PASSTHROUGH = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
# An array element's variables (SCNS_ and SLURM_ names): only an element has them, whatever
# its user's environment says.
ARRAY_SUFFIXES = ("JOB_ID", "TASK_ID", "TASK_COUNT", "TASK_MIN", "TASK_MAX", "TASK_STEP")
ARRAY_NAMES = tuple(f"{p}_ARRAY_{s}" for p in ("SCNS", "SLURM") for s in ARRAY_SUFFIXES)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def base_environment(executor_env: Mapping[str, str]) -> dict[str, str]:
    env = {k: executor_env[k] for k in PASSTHROUGH if k in executor_env}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = DEFAULT_PATH
    return env


def for_account(base: Mapping[str, str], *, name: str, home: str) -> dict[str, str]:
    """The base environment of a job running as the account `name`."""
    return {**base, "HOME": home, "USER": name, "LOGNAME": name}


def shell_exports(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """`env` as a file a POSIX shell sources (`export NAME='value'` lines) and the names it
    had to leave out (not shell identifiers: the shell cannot export them)."""
    lines, skipped = [], []
    for k, v in env.items():
        if _NAME.match(k):
            lines.append(f"export {k}='" + v.replace("'", "'\\''") + "'\n")
        else:
            skipped.append(k)
    return "".join(lines), skipped


def job_environment(
    *, base: Mapping[str, str], user_env: Mapping[str, str], job_id: int, attempt: int,
    cpus: int, memory_mb: int | None, name: str, submit_dir: str | None, worker_id: str,
    user: str | None = None, array: ArrayInfo | None = None, array_job_id: int | None = None,
    array_task_id: int | None = None,
) -> dict[str, str]:
    """Our variables are applied last: a job cannot pretend to be another job (nor an array
    element: array variables come from us only).

    An element (`array_task_id` set) gets SCNS_/SLURM_ARRAY_JOB_ID and ARRAY_TASK_ID, and with
    its array's record (`array`) ARRAY_TASK_COUNT, _MIN, _MAX and _STEP too."""
    env = dict(base)
    env.update(user_env)
    ours = {
        "SCNS_JOB_ID": str(job_id),
        "SCNS_ATTEMPT": str(attempt),
        "SCNS_CPUS": str(cpus),
        "SCNS_JOB_NAME": name,
        "SCNS_SUBMIT_DIR": submit_dir or "",
        "SCNS_WORKER_ID": worker_id,
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_CPUS_PER_TASK": str(cpus),
        "SLURM_CPUS_ON_NODE": str(cpus),
        "SLURM_JOB_NAME": name,
        "SLURM_SUBMIT_DIR": submit_dir or "",
        "SLURMD_NODENAME": worker_id,
        "SLURM_RESTART_COUNT": str(attempt - 1),
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
    }
    if memory_mb:
        ours["SCNS_MEMORY_MB"] = str(memory_mb)
        ours["SLURM_MEM_PER_NODE"] = str(memory_mb)
    if user:
        ours["SCNS_JOB_USER"] = ours["SLURM_JOB_USER"] = user
    env.update(ours)
    for k in ARRAY_NAMES:
        env.pop(k, None)
    if array_task_id is not None:
        env.update(array_environment(array, array_job_id, array_task_id))
    return env


def array_environment(array: ArrayInfo | None, array_job_id: int | None,
                      array_task_id: int) -> dict[str, str]:
    values: list[int | None] = [array.id if array else array_job_id, array_task_id]
    if array is not None:
        values += [array.task_count, array.task_min, array.task_max, array.task_step]
    env: dict[str, str] = {}
    for suffix, v in zip(ARRAY_SUFFIXES, values, strict=False):
        if v is not None:
            env[f"SCNS_ARRAY_{suffix}"] = env[f"SLURM_ARRAY_{suffix}"] = str(v)
    return env


def decode_status(status: int) -> tuple[int | None, int | None]:
    """A shell's exit status -> (exit code, signal). By the shell's convention 128+N means the
    process was killed by signal N (a script that itself runs `exit 130` reads as signal 2)."""
    if status > 128 and status - 128 < 65:
        return None, status - 128
    return status, None
