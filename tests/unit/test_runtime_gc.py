"""A service's entry point (shared.runtime.run) freezes what start-up made, so the cyclic
collector's full passes walk only what the service makes while it runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.procs import ROOT

PROGRAM = textwrap.dedent("""
    import gc
    from shared import runtime
    import aiohttp.web, asyncpg, redis.asyncio  # what a service imports before it runs

    async def main() -> int:
        print(gc.get_freeze_count(), *gc.get_threshold())
        return 0

    raise SystemExit(runtime.run(main))
""")


def test_run_freezes_the_start_up_heap_and_makes_full_collections_rarer() -> None:
    from shared.runtime import GC_THRESHOLDS

    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    frozen, *thresholds = map(int, out)
    assert frozen > 10_000, out  # the imported modules' objects
    assert tuple(thresholds) == GC_THRESHOLDS
