"""Long chaos runs (not a test): the CI-sized suite's driver with bigger numbers.

    python bench/chaos.py --jobs 10000                 # ~10 jobs/s, a fault every 5-15 s
    python bench/chaos.py --jobs 2000 --pg-outage 30 --seed 3
    python bench/chaos.py --partitions --jobs 2000     # + network partitions and clock skew

`--partitions` puts every executor and the scheduler behind their own fault-injecting proxies
to Redis and PostgreSQL and cuts them off (an executor, sometimes all of them, and the
scheduler, each at least --min-partitions times, for --partition-s seconds across the fence's
timeline, healed by reset or by resuming the held connections) while the other faults go on,
with every service's clock skewed by up to 5 s (--no-skew: not) and a share of long jobs; the
summary then also counts overlapping attempts (from the jobs' own locks and marks), NODE_FAIL
by cause and the partitions.

Prints the invariant summary (jobs, faults by kind, lost, double-run attempts, final drift,
time) and writes it as JSON under bench/results/. Exits 1 when a promise was broken.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where array.py would stand in for the
# standard library's `array` (socket imports it): the repo's root takes its place.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.driver import Chaos, ChaosConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10.0, help="submissions per second")
    ap.add_argument("--faults", type=int, default=30, help="at least this many")
    ap.add_argument("--gap", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"),
                    help="seconds between faults")
    ap.add_argument("--pg-outage", type=float, default=30.0, help="PostgreSQL outage, seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--partitions", action="store_true",
                    help="partition executors and the scheduler (and skew the clocks)")
    ap.add_argument("--no-skew", action="store_true", help="with --partitions: clocks agree")
    ap.add_argument("--partition-s", type=float, nargs=2, default=(4.0, 14.0),
                    metavar=("MIN", "MAX"), help="how long one partition lasts, seconds")
    ap.add_argument("--min-partitions", type=int, default=8, help="of each kind, at least")
    ap.add_argument("--long-jobs", type=float, default=0.15,
                    help="with --partitions: the share of jobs that sleep 2-20 s")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    cfg = ChaosConfig(jobs=args.jobs, faults=args.faults, workers=args.workers, cpus=args.cpus,
                      submit_seconds=args.jobs / args.rate, fault_gap_s=tuple(args.gap),
                      pg_outage_s=(args.pg_outage, args.pg_outage), seed=args.seed,
                      settle_timeout_s=600.0, partitions=args.partitions,
                      skew=args.partitions and not args.no_skew,
                      partition_s=tuple(args.partition_s), min_partitions=args.min_partitions,
                      long_job_fraction=args.long_jobs if args.partitions else 0.0)
    chaos = Chaos(cfg)
    result = asyncio.run(chaos.run())
    print(result.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps({"config": dataclasses.asdict(cfg),
                                   "result": dataclasses.asdict(result), "ok": result.ok},
                                  option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
    if result.ok:
        chaos.cleanup()
    else:
        print(f"logs kept in {chaos.work / 'sys' / 'logs'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
