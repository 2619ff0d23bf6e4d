"""`scns logs -f` on a job that outlives the gateway's longest follow (SCNS_FOLLOW_MAX_S): the
CLI resumes each ended follow after the bytes it already printed (`?offset=`), so the job's
output is printed whole, each byte once, and the command ends with the job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state
from tests.e2e.test_tail import env_of
from tests.procs import ROOT

LOG_ROUTE = "/api/v1/jobs/{job_id}/log"


def log_requests(r: Running) -> int:
    """Log requests the gateway has answered to the end (a follow counts once it ended)."""
    text = r.client.call("GET", "/metrics")
    return int(sum(s.value for f in text_string_to_metric_families(text)
                   for s in f.samples
                   if s.name == "scns_gateway_requests_total"
                   and s.labels.get("route") == LOG_ROUTE))


def test_logs_follow_resumes_past_the_longest_follow_time(start_system: Factory,
                                                          tmp_path: Path) -> None:
    r = start_system(follow_max_s=1.0)
    go = tmp_path / "go"
    # multi-byte characters: the resume point is counted in bytes
    job = submit(r, 'for i in 1 2 3; do echo "ligne $i: été ☃"; done\n'
                    f'while [ ! -e {go} ]; do sleep 0.05; done\n'
                    'echo "après go ✓"\n')
    wait_state(r, job["id"], {"RUNNING", *TERMINAL})
    before = log_requests(r)
    cli = subprocess.Popen([sys.executable, "-m", "services.cli", "logs", "-f", str(job["id"])],
                           cwd=ROOT, env=env_of(r, direct=False), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        # the job cannot end before `go`: every follow that ends meanwhile was ended by the
        # gateway at its longest time, and the CLI must have followed again
        deadline = time.monotonic() + 60
        while log_requests(r) < before + 3:
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "the gateway ended no follow"
            time.sleep(0.2)
        assert cli.poll() is None  # still following the running job
    finally:
        go.touch()
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err.decode()
    expected = "".join(f"ligne {i}: été ☃\n" for i in (1, 2, 3)) + "après go ✓\n"
    assert out.decode() == expected, (out, err)
    assert wait_state(r, job["id"], TERMINAL)["state"] == "COMPLETED"

    # the API: `offset` skips that many bytes of the text, followed or not
    whole = expected.encode()
    path = f"/api/v1/jobs/{job['id']}/log"
    for offset in (0, 1, len("ligne 1: é".encode()), len(whole) - 1, len(whole),
                   len(whole) + 10):
        for follow in ("0", "1"):
            got = b"".join(r.client.stream(path, {"offset": offset, "follow": follow}))
            assert got == whole[offset:], (offset, follow, got)
