"""Cron schedules in the active scheduler: the firing loop.

Each tick settles the runs whose jobs ended (failure counts, auto-disable), then fires every
schedule whose next_run_at has come, one transaction each (shared/lifecycle/firing.py: a fire
time makes exactly one job however many replicas tick at once). The loop sleeps until the
next fire time or SCNS_CRON_TICK_S, whichever is sooner, so a schedule added or enabled
through the API is picked up within a tick without any wake-up.

When it is, comes from a Clock: the system's in production, a hand-moved one in the tests (a
hundred fire times in a second, no minute-long sleeps). Expressions are evaluated by
shared/cron.py (`next_fire`, pure), which the gateway shares to validate them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from prometheus_client import Counter
from redis.exceptions import RedisError

from shared import clock
from shared.cron import next_fire
from shared.db import UNAVAILABLE
from shared.leader import Leadership
from shared.lifecycle.firing import Fire, Firing
from shared.wiring import Wiring

__all__ = ["Clock", "CronLoop", "SystemClock", "Tick", "next_fire"]

log = logging.getLogger(__name__)

FIRED = Counter("scns_schedule_fires_total", "Schedule fire times acted on", ["outcome"])
DUE_BATCH = 100
_TRANSIENT: tuple[type[BaseException], ...] = (RedisError, *UNAVAILABLE)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return clock.utcnow()


@dataclass(slots=True)
class Tick:
    fires: list[Fire]
    settled: int

    @property
    def jobs(self) -> list[int]:
        return [f.job_id for f in self.fires if f.job_id is not None]


class CronLoop:
    def __init__(self, wiring: Wiring, clock: Clock | None = None) -> None:
        s = wiring.settings
        self.clock = clock or SystemClock()
        self.tick_s = s.cron_tick_s
        self.firing = Firing(wiring.lifecycle, max_catchup=s.cron_max_catchup,
                             grace_s=s.cron_grace_s, max_array_size=s.max_array_size)

    async def tick(self) -> Tick:
        """Settle ended runs, then fire what is due as of the clock's now."""
        settled = await self.firing.settle()
        now = self.clock.now()
        fires: list[Fire] = []
        while True:
            due = await self.firing.due(now, DUE_BATCH)
            for schedule_id in due:
                try:
                    fires += await self.firing.fire(schedule_id, now)
                except _TRANSIENT:
                    raise
                except Exception:  # one broken schedule must not stop the others
                    log.exception("schedule %d could not fire", schedule_id,
                                  extra={"event": "schedule-error", "schedule_id": schedule_id})
            if len(due) < DUE_BATCH or not fires:
                break
        for f in fires:
            FIRED.labels("skipped" if f.job_id is None else "job").inc()
            log.info("schedule %d %s %s", f.schedule_id,
                     f"made job {f.job_id} for" if f.job_id else "skipped", f.fire_at.isoformat(),
                     extra={"event": "schedule-fired", "schedule_id": f.schedule_id,
                            "job_id": f.job_id, "kind": f.kind, "skipped": f.skipped})
        return Tick(fires=fires, settled=settled)

    async def sleep_s(self) -> float:
        """Until the next fire time, at most a tick."""
        nxt = await self.firing.next_due()
        if nxt is None:
            return self.tick_s
        return min(self.tick_s, max((nxt - self.clock.now()).total_seconds(), 0.0))

    async def run(self, stop: asyncio.Event, leadership: Leadership) -> None:
        """Tick while this replica leads (a standby's ticks would be harmless, only wasted)."""
        while not stop.is_set():
            wait = self.tick_s
            if leadership.held:
                started = time.monotonic()
                try:
                    await self.tick()
                    wait = await self.sleep_s()
                except RedisError as e:  # the record is in PostgreSQL; events follow later
                    log.warning("cron tick: Redis unavailable: %s", e)
                except UNAVAILABLE as e:
                    log.warning("cron paused, PostgreSQL unavailable: %s", e)
                except Exception:
                    log.exception("cron tick failed; trying again", extra={"event": "cron-error"})
                if time.monotonic() - started > 1.0:
                    log.info("cron tick took %.1f s", time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.05))
