"""checkov's Kubernetes policies on the rendered production manifests: no failed check, and
every check skipped by a `checkov.io/skipN` annotation says why.

Offline: `--skip-download` keeps checkov from fetching guidelines from its vendor's API.
checkov is not part of the `dev` extra (checkov 3.3.30 wants packaging<24, pytest 9.2
packaging>=24): `make test` installs it in a venv of its own (`make checkov`, .venv-checkov) and
names it in SCNS_CHECKOV, and then the test fails if it cannot run it. Run alone, the test
finds .venv-checkov/bin/checkov or a checkov on PATH, and is skipped without one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kube import render_text

CHECKED = ("prod-arm64", "prod-arm64+autoscaling")
# Checks that may be skipped, each for a reason written next to its annotation:
#   CKV_K8S_35  the executors read the connection URLs from their environment, not from files,
#               because their jobs run as their uid (deploy/k8s/base/executor.yaml)
ACCEPTED_SKIPS = frozenset({"CKV_K8S_35"})


ROOT = Path(__file__).resolve().parents[2]


def _checkov() -> list[str]:
    named = os.environ.get("SCNS_CHECKOV")
    if named:  # `make test`: required
        assert Path(named).exists(), f"SCNS_CHECKOV={named} does not exist (make checkov)"
        return [named]
    own = ROOT / ".venv-checkov" / "bin" / "checkov"
    if own.exists():
        return [str(own)]
    if importlib.util.find_spec("checkov") is not None:
        return [sys.executable, "-m", "checkov.main"]
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov is not installed (make checkov)")
    return [found]


def _reports(out: str) -> list[dict[str, Any]]:
    data = json.loads(out)
    return data if isinstance(data, list) else [data]


@pytest.mark.parametrize("name", CHECKED)
def test_checkov_passes_the_rendered_production_manifests(name: str, tmp_path: Path) -> None:
    manifests = tmp_path / f"{name}.yaml"
    manifests.write_text(render_text(name), "utf-8")
    proc = subprocess.run(
        [*_checkov(), "--file", str(manifests), "--framework", "kubernetes", "--output", "json",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )
    assert proc.returncode in (0, 1), f"checkov failed to run:\n{proc.stderr[-3000:]}"
    (report,) = _reports(proc.stdout)
    assert report["check_type"] == "kubernetes"
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 0, summary
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}"
              for c in results["failed_checks"]]
    assert not failed, f"checkov on {name}:\n" + "\n".join(failed)
    for check in results["skipped_checks"]:
        where = f"{check['check_id']} on {check['resource']}"
        assert check["check_id"] in ACCEPTED_SKIPS, f"{where}: a new skip, review it"
        reason = check["check_result"].get("suppress_comment", "")
        assert reason and reason != "No comment provided", f"{where}: skipped without a reason"
        assert len(reason.split()) >= 5, f"{where}: say why ({reason!r})"
