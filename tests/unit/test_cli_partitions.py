"""`scns partition …`, `scns limits`, `scns share`, the sinfo-like `scns workers` and the
pending-job explainer of `scns show`, without a server: the pure formatting, and the click
commands against a fake client (the bodies they send, what they print, how they fail)."""

from __future__ import annotations

import io
from datetime import UTC
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from services.cli import limits as limits_cli
from services.cli import main as cli_main
from services.cli import partitions
from services.cli.client import ApiError
from services.cli.limits import (
    explain_lines,
    human_duration,
    limits_body,
    limits_lines,
    num,
    share_footer,
    share_rows,
)
from services.cli.partitions import (
    CLEAR,
    list_cells,
    node_list,
    nodes_table,
    parse_selector,
    partition_body,
    partitions_table,
    show_lines,
    sinfo_rows,
    unpartitioned,
    updated_line,
)
from tests.fakes import FakeClient

DEFAULT: dict[str, Any] = {
    "name": "default", "selector": {}, "default_time_limit": None, "max_time_limit": None,
    "max_cpus_per_job": None, "tier": 0, "allowed_users": None, "default": True,
    "max_running_cpus_per_user": None, "max_pending_jobs_per_user": None,
    "workers": ["arm-node-01", "arm-node-02", "arm-node-03", "laptop"],
    "nodes": {"ready": 3, "draining": 1, "down": 0},
    "total_cpus": 24, "allocated_cpus": 5, "free_cpus": 19,
    "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-02T10:00:00Z",
}
BIG: dict[str, Any] = {
    "name": "big", "selector": {"pool": "big", "arch": "arm64"}, "default_time_limit": 3600,
    "max_time_limit": 86400, "max_cpus_per_job": 64, "tier": 2,
    "allowed_users": ["alice", "bob"], "default": False,
    "max_running_cpus_per_user": 32, "max_pending_jobs_per_user": 100,
    "workers": ["arm-node-02", "arm-node-03"], "nodes": {"ready": 1, "draining": 1, "down": 0},
    "total_cpus": 192, "allocated_cpus": 10, "free_cpus": 182,
    "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z",
}
EMPTY: dict[str, Any] = {
    **BIG, "name": "gpu", "selector": {"gpu": "yes"}, "tier": 1, "default_time_limit": None,
    "max_time_limit": 1800, "max_cpus_per_job": None, "allowed_users": None,
    "max_running_cpus_per_user": None, "max_pending_jobs_per_user": 10, "workers": [],
    "nodes": {"ready": 0, "draining": 0, "down": 0}, "total_cpus": 0, "allocated_cpus": 0,
    "free_cpus": 0,
}
PARTITIONS = [BIG, EMPTY, DEFAULT]  # as the gateway sorts them: tier desc, name


def worker(wid: str, state: str = "ready", **over: Any) -> dict[str, Any]:
    return {"id": wid, "state": state, "cpus": 8, "memory_mb": 16384, "allocated_cpus": 2,
            "allocated_memory_mb": 1024, "labels": {"arch": "arm64"}, "hostname": wid,
            "last_heartbeat": "2026-11-23T12:00:00Z", "drain": state == "draining", **over}


WORKERS = [worker("arm-node-01"), worker("arm-node-02"), worker("arm-node-03", "draining"),
           worker("laptop"), worker("big-9", "down", labels={"pool": "big", "arch": "arm64"})]

SHARE: dict[str, Any] = {
    "items": [
        {"user": "bob", "usage_cpu_s": 0.0, "running_cpus": 0, "shares": 1, "share": 0.25,
         "usage_share": 0.0, "factor": 1.0},
        {"user": "alice", "usage_cpu_s": 1234.5, "running_cpus": 4, "shares": 2, "share": 0.5,
         "usage_share": 0.7, "factor": 0.37892914},
        {"user": "carol", "usage_cpu_s": 529.07, "running_cpus": 1, "shares": 1, "share": 0.25,
         "usage_share": 0.3, "factor": 0.43527528},
    ],
    "half_life_s": 604800.0, "updated_at": "2026-11-23T12:00:00Z",
    "weights": {"age": 1000, "fairshare": 10000, "job": 10, "tier": 100000,
                "max_age_s": 604800},
}

EXPLAIN: dict[str, Any] = {
    "job_id": 12, "state": "PENDING",
    "reasons": [{"reason": "QOSMaxCpuPerUserLimit", "message": "alice runs 8 of 8 CPUs allowed"},
                {"reason": "Priority", "message": "6 jobs ahead on its workers"}],
    "priority": {"score": 5123.4, "factors": {"tier": 0, "job": 0, "fairshare": 0.5,
                                              "age": 0.0123456},
                 "weights": SHARE["weights"]},
    "partitions": [{"name": "big", "eligible": True, "why": None},
                   {"name": "small", "eligible": False,
                    "why": "time limit 7200 s above its maximum 3600 s"}],
    "ahead": 6, "estimated_start_at": "2026-11-24T02:30:00Z",
    "estimate": "from the time limits of 2 running jobs and 6 jobs ahead",
}

JOB: dict[str, Any] = {"id": 12, "name": "train", "user": "alice", "state": "PENDING",
                       "reason": "QOSMaxCpuPerUserLimit", "cpus": 4, "partition": "big,small",
                       "script": "#!/bin/sh\n", "worker_id": None}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient({
        ("GET", "/api/v1/partitions"): {"items": PARTITIONS},
        ("GET", "/api/v1/partitions/big"): BIG,
        ("GET", "/api/v1/partitions/nope"): ApiError(404, "not_found",
                                                     "partition nope does not exist"),
        ("GET", "/api/v1/workers"): {"items": WORKERS, "next_cursor": None, "degraded": False},
        ("GET", "/api/v1/resources"): {"total_cpus": 40, "allocated_cpus": 10,
                                       "utilization": 0.25},
        ("GET", "/api/v1/share"): SHARE,
        ("GET", "/api/v1/jobs/12"): JOB,
        ("GET", "/api/v1/jobs/12/explain"): EXPLAIN,
    })
    for module in (partitions, limits_cli, cli_main):
        monkeypatch.setattr(module, "client", lambda: c)
    monkeypatch.setenv("TZ", "UTC")
    return c


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_main.cli, list(args))


# --- partitions: formatting ------------------------------------------------------------------
def test_list_cells_are_sinfo_like() -> None:
    assert list_cells(DEFAULT) == ["default*", "0", "infinite", "n/a", "UNLIMITED", "-", "all",
                                   "3/4", "5/24", "all"]
    assert list_cells(BIG) == ["big", "2", "1-00:00:00", "1:00:00", "64", "32cpu/100pd",
                               "alice,bob", "1/2", "10/192", "pool=big,arch=arm64"]
    assert list_cells(EMPTY)[2:6] == ["30:00", "n/a", "UNLIMITED", "10pd"]
    assert list_cells({**DEFAULT, "max_running_cpus_per_user": 8})[5] == "8cpu"
    bare = list_cells({"name": "bare", "workers": ["a", "b"]})  # an older gateway's partition
    assert bare[5] == "-" and bare[7] == "0/2"  # no user limits, no node counts


def test_the_list_table() -> None:
    lines = _text(partitions_table(PARTITIONS)).splitlines()
    assert lines[0].split() == ["PARTITION", "TIER", "TIMELIMIT", "DEFAULTTIME", "MAXCPUS",
                                "USERLIMITS", "USERS", "NODES", "CPUS(A/T)", "SELECTOR"]
    assert [line.split()[0] for line in lines[1:]] == ["big", "gpu", "default*"]


def test_show_lines_are_scontrol_like() -> None:
    assert show_lines(BIG, UTC) == [
        "PartitionName=big",
        "   Default=NO Tier=2 AllowUsers=alice,bob",
        "   DefaultTime=1:00:00 MaxTime=1-00:00:00 MaxCPUsPerJob=64",
        "   MaxCPUsPerUser=32 MaxPendingPerUser=100",
        "   Selector=pool=big,arch=arm64",
        "   Nodes=arm-node-[02-03] TotalNodes=2 Ready=1 Draining=1 Down=0",
        "   TotalCPUs=192 AllocatedCPUs=10 FreeCPUs=182",
        "   Created=2026-11-01T10:00:00 Updated=2026-11-01T10:00:00",
    ]
    lines = show_lines(DEFAULT, UTC)
    assert lines[1] == "   Default=YES Tier=0 AllowUsers=ALL"
    assert lines[2] == "   DefaultTime=NONE MaxTime=UNLIMITED MaxCPUsPerJob=UNLIMITED"
    assert lines[3] == "   MaxCPUsPerUser=UNLIMITED MaxPendingPerUser=UNLIMITED"
    assert lines[4] == "   Selector=ALL"
    assert show_lines(EMPTY, UTC)[3] == "   MaxCPUsPerUser=UNLIMITED MaxPendingPerUser=10"
    assert show_lines(EMPTY, UTC)[5].startswith("   Nodes=(none) TotalNodes=0")
    older = {k: v for k, v in BIG.items() if not k.endswith("_per_user")}  # an older gateway
    assert show_lines(older, UTC)[3] == "   MaxCPUsPerUser=UNLIMITED MaxPendingPerUser=UNLIMITED"


@pytest.mark.parametrize(("names", "folded"), [
    ([], ""),
    (["laptop"], "laptop"),
    (["w1", "w2", "w3", "w7"], "w[1-3,7]"),
    (["w3", "w1", "w2", "w2"], "w[1-3]"),
    (["arm-node-02", "arm-node-01", "arm-node-05", "arm-node-06", "arm-node-07"],
     "arm-node-[01-02,05-07]"),
    (["w9", "w10", "w11", "x"], "w9,w[10-11],x"),  # each width its own range, reversibly
    (["arm-node-07", "laptop"], "arm-node-07,laptop"),
])
def test_node_lists_fold_as_slurm_hostlists(names: list[str], folded: str) -> None:
    assert node_list(names) == folded


def test_sinfo_rows_one_per_partition_and_state() -> None:
    # a down worker is in no partition's `workers`: its labels place it
    assert sinfo_rows(PARTITIONS, WORKERS) == [
        ["big", "up", "1-00:00:00", "1", "ready", "arm-node-02"],
        ["big", "up", "1-00:00:00", "1", "draining", "arm-node-03"],
        ["big", "up", "1-00:00:00", "1", "down", "big-9"],
        ["gpu", "up", "30:00", "0", "n/a", ""],
        ["default*", "up", "infinite", "3", "ready", "arm-node-[01-02],laptop"],
        ["default*", "up", "infinite", "1", "draining", "arm-node-03"],
        ["default*", "up", "infinite", "1", "down", "big-9"],
    ]
    assert unpartitioned(PARTITIONS, WORKERS) == []
    assert unpartitioned([BIG, EMPTY], WORKERS) == ["arm-node-01", "laptop"]
    # a worker the partition lists but the workers page does not
    assert sinfo_rows([{**BIG, "workers": ["ghost"]}], [])[0][3:] == ["1", "unknown", "ghost"]


def test_the_per_node_table_names_each_workers_partitions() -> None:
    lines = _text(nodes_table(WORKERS, PARTITIONS)).splitlines()
    assert lines[0].split()[:3] == ["WORKER", "PARTITIONS", "STATE"]
    assert lines[2].split()[:4] == ["arm-node-02", "big,default*", "ready", "2/8"]
    assert lines[4].split()[:3] == ["laptop", "default*", "ready"]
    assert lines[5].split()[:3] == ["big-9", "big,default*", "down"]
    assert _text(nodes_table(WORKERS, [BIG])).splitlines()[1].split()[:2] == ["arm-node-01", "-"]
    older = _text(nodes_table(WORKERS, None)).splitlines()  # a gateway without partitions
    assert older[0].split()[:2] == ["WORKER", "STATE"]


# --- partitions: options -> bodies ------------------------------------------------------------
def test_partition_body_leaves_out_what_was_not_said() -> None:
    assert partition_body() == {}
    assert partition_body(selector={"pool": "big"}, default_time=600, max_time=CLEAR,
                          max_cpus=CLEAR, tier=0, users=CLEAR) == {
        "selector": {"pool": "big"}, "default_time_limit": 600, "max_time_limit": None,
        "max_cpus_per_job": None, "tier": 0, "allowed_users": None}
    assert partition_body(selector=CLEAR) == {"selector": {}}
    assert partition_body(max_user_cpus=8, max_user_pending=CLEAR) == {
        "max_running_cpus_per_user": 8, "max_pending_jobs_per_user": None}


def test_partition_body_default_is_true_or_left_out() -> None:
    assert partition_body(default=True) == {"default": True}
    assert partition_body(default=False) == {}  # never false: the server moves the mark
    assert partition_body(tier=1, default=True) == {"tier": 1, "default": True}


def test_default_flag_of_add_and_update(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/partitions")] = {**BIG, "default": True}
    result = run("partition", "add", "big", "--selector", "pool=big", "--default")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][:3] == ("POST", "/api/v1/partitions", {
        "name": "big", "selector": {"pool": "big"}, "default": True})
    assert result.stdout.endswith("; the default partition\n")
    fake.answers[("PATCH", "/api/v1/partitions/big")] = {**BIG, "default": True}
    result = run("partition", "update", "big", "--default")  # the flag alone is an update
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][:3] == ("PATCH", "/api/v1/partitions/big", {"default": True})
    assert result.stdout == "Updated partition big: Default=YES\n"
    run("partition", "update", "big", "--tier", "3")
    assert "default" not in fake.calls[-1][2]


def test_parse_selector() -> None:
    assert parse_selector(["pool=big", "arch = arm64"]) == {"pool": "big", "arch": "arm64"}
    assert parse_selector(["none"]) is CLEAR
    with pytest.raises(ValueError, match="expected LABEL=VALUE"):
        parse_selector(["pool"])


def test_add_sends_the_options(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/partitions")] = BIG
    result = run("partition", "add", "big", "--selector", "pool=big", "--selector",
                 "arch=arm64", "--default-time", "60", "--max-time", "1-0", "--max-cpus", "64",
                 "--tier", "2", "--users", "alice,bob", "--max-user-cpus", "32",
                 "--max-user-pending", "100")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][:3] == ("POST", "/api/v1/partitions", {
        "name": "big", "selector": {"pool": "big", "arch": "arm64"},
        "default_time_limit": 3600, "max_time_limit": 86400, "max_cpus_per_job": 64,
        "max_running_cpus_per_user": 32, "max_pending_jobs_per_user": 100, "tier": 2,
        "allowed_users": ["alice", "bob"]})
    assert result.stdout == ("Created partition big: selector pool=big,arch=arm64, 2 workers "
                             "match (arm-node-[02-03])\n")
    assert run("partition", "add", "x").exit_code == 0  # nothing but a name: the defaults
    assert fake.calls[-1][2] == {"name": "x"}


def test_add_warns_when_no_worker_matches(fake: FakeClient) -> None:
    fake.answers[("POST", "/api/v1/partitions")] = EMPTY
    result = run("partition", "add", "gpu", "--selector", "gpu=yes")
    assert result.exit_code == 0, result.output
    assert "0 workers match" in result.stdout
    assert "warning: no worker has the labels gpu=yes yet" in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["add", "a/b"], "'a/b' is not a partition name"),
    (["add", "x", "--max-time", "banana"], "--max-time=banana: expected minutes, MM:SS"),
    (["add", "x", "--max-cpus", "0"], "--max-cpus=0: expected a positive integer"),
    (["add", "x", "--max-user-cpus", "-1"], "--max-user-cpus=-1: expected a positive integer"),
    (["update", "big", "--max-user-pending", "lots"],
     "--max-user-pending=lots: expected a positive integer"),
    (["add", "x", "--selector", "pool"], "--selector pool: expected LABEL=VALUE"),
    (["add", "x", "--users", "a,,b"], "--users=a,,b: expected user names"),
])
def test_bad_options_are_one_line_errors(fake: FakeClient, args: list[str], words: str) -> None:
    result = run("partition", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not fake.calls


def test_update_patches_what_was_given_and_none_clears(fake: FakeClient) -> None:
    fake.answers[("PATCH", "/api/v1/partitions/big")] = {
        **BIG, "max_time_limit": None, "allowed_users": None, "default_time_limit": 7200}
    result = run("partition", "update", "big", "--max-time", "none", "--users", "all",
                 "--default-time", "2:00:00")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][:3] == ("PATCH", "/api/v1/partitions/big", {
        "default_time_limit": 7200, "max_time_limit": None, "allowed_users": None})
    assert result.stdout == ("Updated partition big: DefaultTime=2:00:00 MaxTime=UNLIMITED "
                             "AllowUsers=ALL\n")
    for words in (["--max-cpus", "none"], ["--max-time", "UNLIMITED"], ["--max-time", "0"],
                  ["--max-user-cpus", "none"], ["--max-user-pending", "unlimited"]):
        run("partition", "update", "big", *words)
        assert list(fake.calls[-1][2].values()) == [None]
    run("partition", "update", "big", "--selector", "none")
    assert fake.calls[-1][2] == {"selector": {}}


def test_update_needs_an_option(fake: FakeClient) -> None:
    result = run("partition", "update", "big")
    assert result.exit_code == 2 and "nothing to update" in result.stderr
    assert not fake.calls


def test_update_sets_and_clears_the_per_user_limits(fake: FakeClient) -> None:
    fake.answers[("PATCH", "/api/v1/partitions/big")] = {
        **BIG, "max_running_cpus_per_user": 16, "max_pending_jobs_per_user": None}
    result = run("partition", "update", "big", "--max-user-cpus", "16", "--max-user-pending",
                 "none")
    assert result.exit_code == 0, result.output
    assert fake.calls[-1][:3] == ("PATCH", "/api/v1/partitions/big", {
        "max_running_cpus_per_user": 16, "max_pending_jobs_per_user": None})
    assert result.stdout == ("Updated partition big: MaxCPUsPerUser=16 "
                             "MaxPendingPerUser=UNLIMITED\n")


def test_updated_line() -> None:
    assert updated_line({"tier": 3, "max_cpus_per_job": None},
                        {**BIG, "tier": 3, "max_cpus_per_job": None}) == (
        "Updated partition big: MaxCPUsPerJob=UNLIMITED Tier=3")


def test_list_show_and_json(fake: FakeClient) -> None:
    result = run("partition", "list")
    assert result.exit_code == 0, result.output
    assert "default*" in result.stdout and "1-00:00:00" in result.stdout
    assert orjson.loads(run("partition", "list", "--json").stdout)["items"][0]["name"] == "big"
    shown = run("partition", "show", "big")
    assert shown.exit_code == 0 and shown.stdout.startswith("PartitionName=big\n")
    assert orjson.loads(run("partition", "show", "big", "--json").stdout) == BIG
    missing = run("partition", "show", "nope")
    assert missing.exit_code == 1
    assert missing.stderr == "error: partition nope does not exist\n"


def test_rm_reports_each(fake: FakeClient) -> None:
    fake.answers[("DELETE", "/api/v1/partitions/old")] = ""
    fake.answers[("DELETE", "/api/v1/partitions/big")] = ApiError(
        409, "in_use", "partition big is named by 3 pending or running jobs")
    result = run("partition", "rm", "old", "big")
    assert result.exit_code == 1
    assert result.stdout == "partition old deleted\n"
    assert result.stderr == "error: partition big is named by 3 pending or running jobs\n"


# --- workers ------------------------------------------------------------------------------------
def test_workers_is_sinfo_by_partition(fake: FakeClient) -> None:
    result = run("workers")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    assert lines[1].split() == ["big", "up", "1-00:00:00", "1", "ready", "arm-node-02"]
    assert lines[5].split() == ["default*", "up", "infinite", "3", "ready",
                                "arm-node-[01-02],laptop"]
    assert "in no partition" not in result.stderr
    fake.answers[("GET", "/api/v1/partitions")] = {"items": [BIG]}
    assert "in no partition (no job runs there): arm-node-01, laptop" in run("workers").stderr
    assert "cluster: 10/40 CPUs allocated (25%)" in result.stderr


def test_workers_per_node_and_json(fake: FakeClient) -> None:
    result = run("workers", "-N")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:3] == ["arm-node-01", "default*", "ready"]
    assert orjson.loads(run("workers", "--json").stdout)["items"][0]["id"] == "arm-node-01"


def test_workers_of_a_gateway_without_partitions(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/partitions")] = ApiError(404, "not_found", "no route")
    result = run("workers")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[:2] == ["WORKER", "STATE"]


# --- submit -p ----------------------------------------------------------------------------------
def test_submit_checks_the_partition_lists_syntax_only(fake: FakeClient) -> None:
    bad = run("submit", "--wrap", "true", "-p", "big,,small")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: --partition=big,,small: an empty partition name")
    fake.submit_answer = {**JOB, "array": None}
    ok = run("submit", "--wrap", "true", "-p", "big, small")
    assert ok.exit_code == 0, ok.output
    assert fake.submitted[-1][0]["partition"] == "big,small"


# --- limits and share -------------------------------------------------------------------------
LIMITS = {"user": "alice", "max_running_cpus": 8, "max_pending_jobs": None, "shares": 2,
          "running_cpus": 4, "pending_jobs": 12}


def test_limits_body() -> None:
    assert limits_body() == {}
    assert limits_body(max_running_cpus=8, max_pending_jobs=CLEAR, shares=2) == {
        "max_running_cpus": 8, "max_pending_jobs": None, "shares": 2}
    assert limits_body(max_running_cpus=CLEAR) == {"max_running_cpus": None}


def test_limits_lines() -> None:
    assert limits_lines(LIMITS) == [
        "User=alice Shares=2",
        "   MaxRunningCPUs=8 RunningCPUs=4",
        "   MaxPendingJobs=UNLIMITED PendingJobs=12",
    ]


def test_limits_shows_or_puts_then_shows(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/users/alice/limits")] = LIMITS
    fake.answers[("PUT", "/api/v1/users/alice/limits")] = LIMITS
    shown = run("limits", "alice")
    assert shown.exit_code == 0, shown.output
    assert [c[:2] for c in fake.calls] == [("GET", "/api/v1/users/alice/limits")]
    assert shown.stdout.splitlines()[1] == "   MaxRunningCPUs=8 RunningCPUs=4"
    fake.calls.clear()
    put = run("limits", "alice", "--max-running-cpus", "8", "--max-pending-jobs", "none",
              "--shares", "2", "--json")
    assert put.exit_code == 0, put.output
    assert [c[:3] for c in fake.calls] == [("PUT", "/api/v1/users/alice/limits", {
        "max_running_cpus": 8, "max_pending_jobs": None, "shares": 2})]  # it answers them
    assert orjson.loads(put.stdout) == LIMITS
    fake.answers[("PUT", "/api/v1/users/alice/limits")] = ""  # a bare 200: read them back
    fake.calls.clear()
    assert run("limits", "alice", "--shares", "3").exit_code == 0
    assert [c[:2] for c in fake.calls] == [("PUT", "/api/v1/users/alice/limits"),
                                           ("GET", "/api/v1/users/alice/limits")]
    assert run("limits", "alice", "--shares", "0").exit_code == 2


def test_limits_of_someone_else(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/users/bob/limits")] = ApiError(404, "not_found",
                                                                 "user bob is not known")
    result = run("limits", "bob")
    assert result.exit_code == 1 and result.stderr == "error: user bob is not known\n"


def test_share_rows_lowest_factor_first() -> None:
    assert share_rows(SHARE) == [
        ["alice", "1234.5", "4", "2", "50.0", "70.0", "0.379"],
        ["carol", "529.1", "1", "1", "25.0", "30.0", "0.435"],
        ["bob", "0.0", "0", "1", "25.0", "0.0", "1.000"],
    ]


def test_share_footer() -> None:
    assert share_footer(SHARE, UTC) == [
        "usage half-life 7 days (as of 2026-11-23T12:00:00); factor = 2^-(usage share / "
        "share)",
        "priority = 100000*tier + 10000*factor + 1000*age + 10*job priority; age = "
        "min(waited / 7 days, 1)",
    ]
    assert share_footer({"items": [], "half_life_s": 5400, "updated_at": None}) == [
        "usage half-life 1 hour 30 minutes; factor = 2^-(usage share / share)"]


def test_share_command(fake: FakeClient) -> None:
    result = run("share")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["USER", "USAGE(CPU-s)", "RUNNING", "CPUS", "SHARES", "SHARE",
                                "(%)", "USAGE", "SHARE", "(%)", "FACTOR"]
    assert [line.split()[0] for line in lines[1:]] == ["alice", "carol", "bob"]
    assert "factor = 2^-(usage share / share)" in result.stderr
    assert orjson.loads(run("share", "--json").stdout) == SHARE


@pytest.mark.parametrize(("x", "text"), [(0, "0"), (0.5, "0.5"), (0.0123456, "0.012"),
                                         (5123.4, "5123.4"), (100000.0, "100000"), (None, "-")])
def test_num(x: float | None, text: str) -> None:
    assert num(x) == text


@pytest.mark.parametrize(("seconds", "text"), [(604800, "7 days"), (86400 + 3600, "1 day 1 hour"),
                                               (90, "1 minute 30 s"), (0, "0 s")])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# --- the explainer ------------------------------------------------------------------------------
def test_explain_lines() -> None:
    assert explain_lines(EXPLAIN, UTC) == [
        "Reasons:",
        "  QOSMaxCpuPerUserLimit: alice runs 8 of 8 CPUs allowed",
        "  Priority: 6 jobs ahead on its workers",
        "Priority=5123.4 (age=0.012, fairshare=0.5, job=0, tier=0)",
        "Partitions:",
        "  big: eligible",
        "  small: not eligible (time limit 7200 s above its maximum 3600 s)",
        "StartTime=2026-11-24T02:30:00 (from the time limits of 2 running jobs and 6 jobs "
        "ahead)",
        "Ahead=6",
    ]


def test_explain_lines_without_an_estimate() -> None:
    bare = {"job_id": 12, "state": "PENDING", "reasons": [], "priority": None,
            "partitions": [], "ahead": None, "estimated_start_at": None,
            "estimate": "no estimate: no worker can run it"}
    assert explain_lines(bare, UTC) == [
        "Reasons: none given", "Priority=Unknown",
        "StartTime=Unknown (no estimate: no worker can run it)", "Ahead=Unknown"]


def test_show_explains_a_pending_job(fake: FakeClient) -> None:
    result = run("show", "12")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "QOSMaxCpuPerUserLimit" in text.split("Reasons:")[0]  # the job's own reason row
    tail = text[text.index("Reasons:"):].splitlines()
    assert tail == explain_lines(EXPLAIN)
    as_json = orjson.loads(run("show", "12", "--json").stdout)
    assert as_json["explain"] == EXPLAIN and as_json["id"] == 12


def test_show_skips_the_explainer_of_an_older_gateway(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/jobs/12/explain")] = ApiError(404, "not_found", "no route")
    result = run("show", "12")
    assert result.exit_code == 0, result.output
    assert "Reasons:" not in result.stdout and not result.stderr
    assert "explain" not in orjson.loads(run("show", "12", "--json").stdout)


def test_show_does_not_explain_a_running_job(fake: FakeClient) -> None:
    fake.answers[("GET", "/api/v1/jobs/12")] = {**JOB, "state": "RUNNING", "reason": None}
    result = run("show", "12")
    assert result.exit_code == 0 and "Reasons:" not in result.stdout
    assert ("GET", "/api/v1/jobs/12/explain", None, None) not in fake.calls


def _text(renderable: Any) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(renderable)
    return buffer.getvalue()
