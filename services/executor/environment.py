"""The environment a job sees: clean, plus the user's variables, plus ours. Pure."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Carried over from the executor's own environment (never its secrets or SCNS_* settings).
PASSTHROUGH = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")


def base_environment(executor_env: Mapping[str, str]) -> dict[str, str]:
    env = {k: executor_env[k] for k in PASSTHROUGH if k in executor_env}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = DEFAULT_PATH
    return env


def job_environment(
    *, base: Mapping[str, str], user_env: Mapping[str, str], job_id: int, attempt: int,
    cpus: int, memory_mb: int | None, name: str, submit_dir: str | None, worker_id: str,
) -> dict[str, str]:
    """Our variables are applied last: a job cannot pretend to be another job."""
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
    }
    if memory_mb:
        ours["SCNS_MEMORY_MB"] = str(memory_mb)
        ours["SLURM_MEM_PER_NODE"] = str(memory_mb)
    env.update(ours)
    return env


def decode_status(status: int) -> tuple[int | None, int | None]:
    """A shell's exit status -> (exit code, signal). By the shell's convention 128+N means the
    process was killed by signal N (a script that itself runs `exit 130` reads as signal 2)."""
    if status > 128 and status - 128 < 65:
        return None, status - 128
    return status, None
