"""The scheduler's demand figures (services/scheduler/demand.py) read from a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.scheduler import demand


async def test_demand_reads_jobs_and_ready_workers(pool: asyncpg.Pool[Any]) -> None:
    empty = await demand.read(pool)
    assert (empty.demand_cpus, dict(empty.worker_cpus)) == (0, {})
    await pool.executemany(
        "INSERT INTO jobs (script, cpus, state, reason) VALUES ('true', $1, $2, $3)",
        [(4, "PENDING", None), (8, "PENDING", "Resources"), (16, "PENDING", "Held"),
         (2, "PENDING", "Dependency"), (3, "RUNNING", None), (5, "ALLOCATED", None),
         (64, "COMPLETED", None)])
    await pool.executemany(
        "INSERT INTO workers (id, incarnation, hostname, state, cpus, memory_mb, labels) "
        "VALUES ($1, 'i', 'h', $2, $3, 1024, $4::jsonb)",
        [("a", "ready", 32, {"pool": "fixed"}), ("b", "ready", 16, {}),
         ("c", "ready", 30, {"pool": "autoscaled"}), ("d", "draining", 30,
                                                        {"pool": "autoscaled"}),
         ("e", "down", 99, {"pool": "fixed"})])
    d = await demand.read(pool)
    assert d.demand_cpus == 4 + 8 + 3 + 5  # Priority + Resources + busy; not Held/Dependency
    assert (d.pending_cpus["Priority"], d.pending_cpus["Held"]) == (4, 16)
    assert dict(d.worker_cpus) == {"fixed": 32, "": 16, "autoscaled": 30}


async def test_the_refresh_loop_keeps_the_last_figures(pool: asyncpg.Pool[Any]) -> None:
    collector = demand.DemandCollector()
    stop = asyncio.Event()
    task = asyncio.create_task(demand.run(pool, stop, collector, period_s=0.05))
    try:
        for _ in range(100):
            if collector.last is not None:
                break
            await asyncio.sleep(0.02)
        assert collector.last is not None and collector.last.demand_cpus == 0
        await pool.execute("INSERT INTO jobs (script, cpus) VALUES ('true', 6)")
        for _ in range(100):
            if collector.last.demand_cpus == 6:
                break
            await asyncio.sleep(0.02)
        assert collector.last.demand_cpus == 6
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
