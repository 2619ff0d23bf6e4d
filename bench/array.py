"""Job array benchmark (not a test): big arrays through the HTTP API.

    python bench/array.py                          # 2 executors x 96 virtual CPUs
    python bench/array.py --size 2000 --run 500    # a small smoke run
    python bench/array.py --url http://host:8080   # a running system

(a) accepts a --size element array (held, so nothing runs: `sleep 1000` elements) and times
    the one POST (target <= 2 s), checks the array's element count, times `scns queue` folding
    it to one line, then cancels it with ONE DELETE on the array's id (target <= 2 s) and checks
    every element is CANCELLED;
(b) submits a --run element array of `true` and polls GET /jobs/{id} (its `array.states`)
    until every element has ended: elements/s from the submit to the last end.

Prints and writes JSON (bench/results/array-<time>.json, or --json-out).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is `array.py`: its folder, which `python bench/array.py` puts first on sys.path,
# would stand in for the standard library's `array` module (socket imports it): the repo's
# root takes its place.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import psutil

from services.cli.client import Client
from services.cli.up import System
from shared.localinfra import free_port
from shared.settings import Settings

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
TARGET_S = 2.0


@contextlib.contextmanager
def system(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.url:
        yield args.url, os.environ.get("SCNS_TOKEN", "")
        return
    data = Path(tempfile.mkdtemp(prefix="scns-bench-array-"))
    os.chmod(data, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCNS_")}
    settings = Settings.from_env({**env, "SCNS_DATA_DIR": str(data),
                                  "SCNS_GATEWAY_PORT": str(free_port()),
                                  "SCNS_WORKER_ID": "bench", "SCNS_LOG_LEVEL": "WARNING",
                                  "SCNS_MAX_ARRAY_SIZE": str(max(args.size, args.run,
                                                                 100_001))})
    sysm = System(settings, env, workers=args.workers, cpus=args.cpus, echo=False)
    try:
        url = sysm.start()
        yield url, sysm.admin_token
    finally:
        sysm.stop()
        shutil.rmtree(data, ignore_errors=True)


def states_of(c: Client, array_id: int) -> tuple[dict[str, int], int]:
    summary = c.call("GET", f"/api/v1/jobs/{array_id}")["array"]
    return dict(summary["states"]), int(summary["count"])


def wait_terminal(c: Client, array_id: int, within_s: float, poll_s: float = 0.2
                  ) -> dict[str, int]:
    deadline = time.monotonic() + within_s
    while True:
        states, count = states_of(c, array_id)
        if sum(n for s, n in states.items() if s in TERMINAL) >= count:
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"array {array_id} not finished after {within_s:g}s: {states}")
        time.sleep(poll_s)


def big_array(c: Client, url: str, size: int, throttle: int | None) -> dict[str, Any]:
    """(a) Accept, fold in `scns queue`, cancel with one DELETE. Held, or with `throttle`
    elements running (`sleep 1000`) and the rest waiting for them."""
    body: dict[str, Any] = {"script": "#!/bin/sh\nsleep 1000\n", "name": "bench-big",
                            "array": f"0-{size - 1}"}
    if throttle:
        body["array"] += f"%{throttle}"
    else:
        body["hold"] = True
    t0 = time.perf_counter()
    first = c.submit(body, retry_s=0)
    accept_s = time.perf_counter() - t0
    array_id = int(first["id"])
    states, count = states_of(c, array_id)
    if count != size or sum(states.values()) != size:
        raise RuntimeError(f"array {array_id}: {count} elements, states {states}; expected {size}")

    env = {**os.environ, "SCNS_URL": url, "SCNS_TOKEN": c.token or ""}
    t0 = time.perf_counter()
    shown = subprocess.run([sys.executable, "-m", "services.cli", "queue", "--state",
                            "PENDING"], cwd=Path(__file__).resolve().parents[1], env=env,
                           capture_output=True, text=True, check=True, timeout=300)
    queue_s = time.perf_counter() - t0
    folded = [line for line in shown.stdout.splitlines() if line.split()[:1]
              and line.split()[0].startswith(f"{array_id}_")]

    t0 = time.perf_counter()
    answer = c.call("DELETE", f"/api/v1/jobs/{array_id}")
    cancel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    final = wait_terminal(c, array_id, 120)
    all_cancelled_s = cancel_s + time.perf_counter() - t0
    return {
        "elements": size, "array_job_id": array_id, "held": not throttle, "throttle": throttle,
        "accept_s": round(accept_s, 3), "accept_ok": accept_s <= TARGET_S,
        "cancel_s": round(cancel_s, 3), "cancel_ok": cancel_s <= TARGET_S,
        "cancel_answer": answer, "all_cancelled_s": round(all_cancelled_s, 3),
        "final_states": final,
        "queue_fold_s": round(queue_s, 3), "queue_lines": folded,
    }


def run_array(c: Client, size: int, within_s: float) -> dict[str, Any]:
    """(b) Every element of a `true` array to its end."""
    t0 = time.perf_counter()
    first = c.submit({"script": "#!/bin/sh\ntrue\n", "name": "bench-run",
                      "array": f"0-{size - 1}"}, retry_s=0)
    accept_s = time.perf_counter() - t0
    states = wait_terminal(c, int(first["id"]), within_s)
    total_s = time.perf_counter() - t0
    return {"elements": size, "array_job_id": first["id"], "accept_s": round(accept_s, 3),
            "all_ended_s": round(total_s, 3), "elements_per_s": round(size / total_s, 1),
            "final_states": states}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000,
                    help="elements of the held array accepted and cancelled")
    ap.add_argument("--run", type=int, default=10_000, help="elements of the array run to end")
    ap.add_argument("--throttle", type=int, help="(a) runs N elements at once instead of "
                    "holding the array")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=96, help="virtual CPUs per worker")
    ap.add_argument("--url", help="use a running gateway instead of starting a system")
    ap.add_argument("--json-out", type=Path, help="where to write the results "
                    "[bench/results/array-<time>.json]")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "arch": os.uname().machine},
        "config": {"workers": args.workers, "cpus_per_worker": args.cpus, "size": args.size,
                   "run": args.run, "throttle": args.throttle},
    }
    with system(args) as (url, token):
        c = Client(url, token=token)
        if args.size:
            big = results["big_array"] = big_array(c, url, args.size, args.throttle)
            print(f"(a) {big['elements']} elements: accepted in {big['accept_s']} s "
                  f"(target <= {TARGET_S:g} s: {'ok' if big['accept_ok'] else 'MISSED'}); "
                  f"cancelled with one DELETE in {big['cancel_s']} s "
                  f"({'ok' if big['cancel_ok'] else 'MISSED'}), all CANCELLED after "
                  f"{big['all_cancelled_s']} s")
            print(f"    scns queue folded it in {big['queue_fold_s']} s: "
                  + ("; ".join(s.split()[0] for s in big["queue_lines"]) or "(no line)"))
        if args.run:
            ran = results["run_array"] = run_array(c, args.run, 60 + args.run / 10)
            print(f"(b) {ran['elements']} elements of `true`: accepted in {ran['accept_s']} s, "
                  f"all ended after {ran['all_ended_s']} s: {ran['elements_per_s']} "
                  f"elements/s; {ran['final_states']}")
    path = args.json_out or Path(__file__).parent / "results" / \
        f"array-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
    ok = all(results.get("big_array", {}).get(k, True) for k in ("accept_ok", "cancel_ok"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
