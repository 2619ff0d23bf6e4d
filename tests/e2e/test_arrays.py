"""Acceptance: arrays, dependency chains and #SBATCH scripts on a whole running system (real
processes, real Redis and PostgreSQL), through the API and the real `scns` CLI."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state
from tests.procs import ROOT

SCNS = [sys.executable, "-m", "services.cli"]


def scns(r: Running, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCNS, *args], cwd=cwd, env=r.env, capture_output=True, text=True,
                          timeout=120, check=False)


def wait_array(r: Running, array_id: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        states: dict[str, int] = r.client.call("GET", f"/api/v1/jobs/{array_id}")["array"][
            "states"]
        if set(states) <= TERMINAL:
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


def t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def test_a_throttled_array_of_one_second_jobs(start_system: Factory) -> None:
    """array=0-9%2: ten elements COMPLETED, never more than two at once (from their own
    start and end times), each seeing its index."""
    r = start_system(cpus=8)
    a = submit(r, "echo index=$SCNS_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT "
                  "step=$SCNS_ARRAY_TASK_STEP max=$SLURM_ARRAY_TASK_MAX "
                  "array=$SLURM_ARRAY_JOB_ID\nsleep 1\n", array="0-9%2", name="sweep")
    aid = a["id"]
    assert wait_array(r, aid) == {"COMPLETED": 10}
    items: list[dict[str, Any]] = r.client.call(
        "GET", "/api/v1/jobs", query={"array_job_id": aid, "limit": 100})["items"]
    assert sorted(j["array_task_id"] for j in items) == list(range(10))
    for j in items:  # a listed job is the job as shown alone, without its script and env,
        ref = f"/api/v1/jobs/{aid}_{j['array_task_id']}"  # with its attempt's usage
        alone = r.client.call("GET", ref)
        usage = r.client.call("GET", f"{ref}/attempts")["items"][-1]
        assert j == {**{k: v for k, v in alone.items() if k not in ("script", "env")},
                     "peak_rss_kb": usage["peak_rss_kb"], "cpu_s": usage["cpu_s"]}
        assert j["array_throttle"] == 2 and j["cpu_s"] is not None, j
    spans = [(t(j["started_at"]), t(j["finished_at"])) for j in items]
    assert peak_concurrency(spans) == 2
    log = r.client.call("GET", f"/api/v1/jobs/{aid}_3/log")
    assert log.strip() == f"index=3 of 10 step=1 max=9 array={aid}"
    attempts = r.client.call("GET", f"/api/v1/jobs/{aid}_3/attempts")["items"]
    assert [x["state"] for x in attempts] == ["COMPLETED"]


def test_a_chain_runs_in_order_and_a_failed_head_cancels_the_rest(start_system: Factory
                                                                  ) -> None:
    r = start_system(cpus=4)
    a = submit(r, "sleep 0.5")
    b = submit(r, "sleep 0.2", dependency=f"afterok:{a['id']}")
    c = submit(r, "true", dependency=f"afterok:{b['id']}")
    done = [wait_state(r, j["id"], {"COMPLETED"}, timeout=30) for j in (a, b, c)]
    for before, later in itertools.pairwise(done):
        assert t(later["started_at"]) >= t(before["finished_at"])
    x = submit(r, "exit 3")
    y = submit(r, "true", dependency=f"afterok:{x['id']}")
    z = submit(r, "true", dependency=f"afterok:{y['id']}")
    for j in (y, z):
        got = wait_state(r, j["id"], TERMINAL, timeout=30)
        assert (got["state"], got["reason"], got["started_at"]) == (
            "CANCELLED", "DependencyNeverSatisfied", None)


def test_python_and_crlf_scripts_run_and_print(start_system: Factory) -> None:
    r = start_system(cpus=2)
    py = submit(r, "#!/usr/bin/env python3\nimport sys\n"
                   "print('from python', sys.version_info[0])\n")
    crlf = submit(r, "#!/bin/bash\r\n#SBATCH -c 1\r\necho one\r\necho two\r\n")
    for j in (py, crlf):
        assert wait_state(r, j["id"], TERMINAL)["state"] == "COMPLETED"
    assert r.client.call("GET", f"/api/v1/jobs/{py['id']}/log") == "from python 3\n"
    assert r.client.call("GET", f"/api/v1/jobs/{crlf['id']}/log") == "one\ntwo\n"


def test_output_patterns_are_files_in_the_working_directory(start_system: Factory,
                                                            tmp_path: Path) -> None:
    r = start_system(cpus=2)
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the executor is root here: jobs run as nobody
    a = submit(r, "echo out-$SCNS_ARRAY_TASK_ID\necho err >&2\n", array="0-1",
               workdir=str(work), output="res-%A_%a.out", error="res-%A_%a.err", name="pat")
    assert wait_array(r, a["id"]) == {"COMPLETED": 2}
    for i in (0, 1):
        assert (work / f"res-{a['id']}_{i}.out").read_text() == f"out-{i}\n"
        assert (work / f"res-{a['id']}_{i}.err").read_text() == "err\n"
    assert r.client.call("GET", f"/api/v1/jobs/{a['id']}_1/log") == "out-1\n"


def test_gpu_and_multi_node_scripts_are_refused_and_create_nothing(start_system: Factory,
                                                                   tmp_path: Path) -> None:
    r = start_system(cpus=2)
    before = r.client.call("GET", "/api/v1/jobs", query={"limit": 200})["items"]
    for directive, words in (("--gres=gpu:1", "no GPUs"), ("--nodes=2", "one node")):
        script = tmp_path / "bad.sh"
        script.write_text(f"#!/bin/bash\n#SBATCH {directive}\necho hi\n")
        for extra in ((), ("--test-only",)):
            done = scns(r, "submit", *extra, str(script))
            assert done.returncode == 1 and words in done.stderr, (directive, done.stderr)
            assert "line 2" in done.stderr
    assert r.client.call("GET", "/api/v1/jobs", query={"limit": 200})["items"] == before


def test_sbatch_array_script_through_the_cli(start_system: Factory, tmp_path: Path) -> None:
    """An #SBATCH --array script becomes an array (not one job); --wait shows it through and
    exits non-zero because one element failed."""
    r = start_system(cpus=4)
    script = tmp_path / "sweep.sh"
    script.write_text("#!/bin/bash\n#SBATCH --array=1-4%2  # a sweep\n#SBATCH -J sweep\n"
                      "[ \"$SLURM_ARRAY_TASK_ID\" != 3 ]\n")
    done = scns(r, "submit", "--wait", str(script), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "array of 4, at most 2 at once" in done.stderr + done.stdout
    assert "1 FAILED" in done.stderr + done.stdout and "_3" in done.stderr + done.stdout
