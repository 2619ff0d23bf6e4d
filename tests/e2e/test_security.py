"""The users issue's four reproductions, against a whole system started as `scns up` starts it
(gateway, scheduler, executor as processes; the executor as root here, so jobs run as nobody)."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest

from services.cli.client import ApiError, Client
from tests.e2e.conftest import TERMINAL, Factory, submit, wait_state
from tests.helpers import alive_with


def test_another_user_can_neither_see_nor_cancel_my_jobs(start_system: Factory) -> None:
    """Was: anyone listed every job with its env and cancelled anyone's (X-SCNS-User: bob ->
    202); a POST without Content-Type was accepted."""
    r = start_system()
    alice = Client(r.url, token=r.client.call("POST", "/api/v1/tokens",
                                              {"user": "alice"})["token"])
    bob = Client(r.url, token=r.client.call("POST", "/api/v1/tokens", {"user": "bob"})["token"])
    job = alice.call("POST", "/api/v1/jobs", {"script": "sleep 30\n", "env": {"KEY": "s3cret"}})
    with pytest.raises(ApiError) as e:
        bob.call("DELETE", f"/api/v1/jobs/{job['id']}")
    assert e.value.status == 404
    assert bob.call("GET", "/api/v1/jobs")["items"] == []
    listed = alice.call("GET", "/api/v1/jobs")["items"]
    assert [j["id"] for j in listed] == [job["id"]] and "env" not in listed[0]
    assert b"s3cret" not in orjson.dumps(r.client.call("GET", "/api/v1/jobs"))
    # a form post (no preflight in a browser) and the old header: refused
    token = f"Bearer {alice.token}"
    json_body = "application/json"
    for headers, status in (({"Content-Type": json_body}, 401),
                            ({"Content-Type": json_body, "X-SCNS-User": "alice"}, 401),
                            ({"Authorization": token}, 415),  # urllib's form default
                            ({"Authorization": token, "Content-Type": "text/plain"}, 415),
                            ({"Authorization": token, "Content-Type": json_body,
                              "Origin": "http://evil.example"}, 403)):
        req = urllib.request.Request(f"{r.url}/api/v1/jobs", data=b'{"script": "echo x"}',
                                     method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(req, timeout=10)
        http_error.value.close()
        assert http_error.value.code == status
    assert alice.call("DELETE", f"/api/v1/jobs/{job['id']}")["id"] == job["id"]


def test_a_job_finds_no_database_or_redis_url(start_system: Factory) -> None:
    """Was: `cat /proc/[0-9]*/environ` printed the executor's SCNS_DATABASE_URL."""
    r = start_system()
    job = submit(r, "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep '^SCNS_'\n"
                    "id -u\n")
    assert wait_state(r, job["id"], TERMINAL)["state"] == "COMPLETED"
    log = r.client.call("GET", f"/api/v1/jobs/{job['id']}/log")
    assert f"SCNS_JOB_ID={job['id']}" in log  # it read its own environment
    assert "SCNS_DATABASE_URL" not in log and "SCNS_REDIS_URL" not in log
    assert r.settings.database_url not in log
    assert log.strip().splitlines()[-1] != "0"  # not root


def test_a_timed_out_job_leaves_no_setsid_process(start_system: Factory) -> None:
    """Was: a job with time_limit 3 running `setsid -f sleep 9999` ended TIMEOUT while the
    sleep kept running."""
    r = start_system(kill_grace_s=1.0)
    marker = str(9000 + uuid.uuid4().int % 999) + ".5"
    job = submit(r, f"setsid -f sleep {marker}\nsleep 600\n", time_limit=3)
    assert wait_state(r, job["id"], {"RUNNING"}, 30)
    deadline = time.monotonic() + 15
    while not alive_with(f"sleep {marker}"):  # it did escape its process group
        assert time.monotonic() < deadline, "the background sleep never started"
        time.sleep(0.05)
    done = wait_state(r, job["id"], TERMINAL, 60)
    assert done["state"] == "TIMEOUT"
    assert alive_with(f"sleep {marker}") == []  # gone by the time the end is recorded


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")
def test_a_job_over_its_memory_ends_out_of_memory(start_system: Factory) -> None:
    """Was: a job with memory_mb 100 that allocated 800 MB ended COMPLETED."""
    r = start_system()
    job = submit(r, "#!/usr/bin/env python3\nb = b'x' * (800 << 20)\nprint('survived')\n",
                 memory_mb=100)
    done = wait_state(r, job["id"], TERMINAL, 60)
    assert done["state"] == "OUT_OF_MEMORY", done
    assert "survived" not in r.client.call("GET", f"/api/v1/jobs/{job['id']}/log")
    # the executor is fine and keeps running jobs
    assert wait_state(r, submit(r, "echo fine\n")["id"], TERMINAL)["state"] == "COMPLETED"
