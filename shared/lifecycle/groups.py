"""Operations on many jobs at once: a whole array (cancel, hold, release, each one statement),
the throttle of `%N` arrays, and the resolution of dependencies.

Dependencies are resolved by the active scheduler only (one resolver: two could each see the
other's edge as still waiting and leave a job waiting forever). It is told what changed, from
events: jobs that ended or started, arrays cancelled at once, new submissions with a
dependency; a sweep of every waiting edge on its first pass and then now and then is the safety
net for an event lost. A dependency that can never be met cancels its job, whose own dependents
are then decided in the same call (the cascade down a chain).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.dispatch import Dispatch
from shared.events import Event, JobFinished, JobUpdated
from shared.lifecycle.core import LifecycleCore
from shared.lifecycle.store import TransitionStore
from shared.states import JobState

log = logging.getLogger(__name__)

NEVER_SATISFIED = "DependencyNeverSatisfied"
MAX_CASCADE = 1000  # rounds of a chain of cancellations resolved in one call


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayChange:
    array_job_id: int
    count: int  # elements changed at once
    stopping: int = 0  # running elements asked to stop (a cancel)


@dataclass(slots=True)
class Changed:
    """What the scheduler learnt from events since its last pass."""

    ended: set[int] = field(default_factory=set)  # jobs that ended or started
    arrays: set[int] = field(default_factory=set)  # arrays whose elements all changed at once
    fresh: set[int] = field(default_factory=set)  # new dependents (jobs or arrays)
    sweep: bool = False

    def __bool__(self) -> bool:
        return bool(self.ended or self.arrays or self.fresh or self.sweep)

    def take(self) -> Changed:
        taken = Changed(set(self.ended), set(self.arrays), set(self.fresh), self.sweep)
        self.ended.clear()
        self.arrays.clear()
        self.fresh.clear()
        self.sweep = False
        return taken

    def merge(self, other: Changed) -> None:
        """Put back what a failed pass did not get to (nothing is lost to an outage)."""
        self.ended |= other.ended
        self.arrays |= other.arrays
        self.fresh |= other.fresh
        self.sweep = self.sweep or other.sweep


@dataclass(slots=True)
class Resolved:
    met: int = 0
    cancelled: int = 0
    rounds: int = 0


class GroupOps(LifecycleCore):
    # --- a whole array ---------------------------------------------------------------------
    async def cancel_array(self, array_id: int, reason: str = "cancelled by user"
                           ) -> ArrayChange:
        """Every element not yet ended: those not started CANCELLED in one statement (the
        ALLOCATED ones' capacity and launches withdrawn), the running ones stopped by their
        executors in one more."""
        n, allocated = await self.store.cancel_array(array_id, reason)
        slots = [Dispatch(worker_id=w, job_id=j, attempt=a) for j, a, w in allocated]
        running = await self.store.stop_array(array_id)
        await self._emit([JobUpdated(job_id=array_id, attempt=1, change="cancel", reason=reason,
                                     array=True, count=n)],
                         release=slots, withdraw=slots, wake=f"array-{array_id}")
        for job in running:
            await self._control(job, requeue=False)
        return ArrayChange(array_job_id=array_id, count=n, stopping=len(running))

    async def hold_array(self, array_id: int) -> ArrayChange:
        n = await self.store.hold_array(array_id)
        await self._emit([JobUpdated(job_id=array_id, attempt=1, change="hold", reason="Held",
                                     array=True, count=n)])
        return ArrayChange(array_job_id=array_id, count=n)

    async def release_array(self, array_id: int) -> ArrayChange:
        n = await self.store.release_array(array_id)
        await self._emit([JobUpdated(job_id=array_id, attempt=1, change="release", array=True,
                                     count=n)], wake=f"array-{array_id}")
        return ArrayChange(array_job_id=array_id, count=n)

    # --- the throttle (the scheduler, each pass) -------------------------------------------
    async def admit_array_tasks(self) -> int:
        """Let the next elements of throttled arrays into the queue, as many as each array's
        throttle has room for; returns how many."""
        room = [(a, n) for a, n in await self.store.throttled_arrays() if n > 0]
        return await self.store.promote_array_tasks(room)

    # --- dependencies (the scheduler, each pass) -------------------------------------------
    async def resolve_dependencies(self, changed: Changed) -> Resolved:
        """Decide the dependencies `changed` may have settled, in one transaction that holds
        the dependency lock (two resolvers at once could each see the other's edge as still
        waiting and leave a job waiting for ever); then announce the cancellations."""
        out = Resolved()
        cancelled: list[tuple[int, int, int | None]] = []
        ended, arrays = sorted(changed.ended), sorted(changed.arrays)
        fresh, sweep = sorted(changed.fresh), changed.sweep
        async with self.pool.acquire() as conn, conn.transaction():
            store = TransitionStore(conn)
            await store.lock_dependencies()
            while out.rounds < MAX_CASCADE and (ended or arrays or fresh or sweep):
                out.rounds += 1
                dependents = await store.evaluate_edges(ended=ended, arrays=arrays,
                                                        fresh=fresh, sweep=sweep)
                settled = await store.settle_dependencies(dependents) if dependents else []
                met = [(d, a) for d, a, s in settled if s == "met"]
                never = [(d, a) for d, a, s in settled if s == "never"]
                if met:
                    out.met += await store.dependency_met(*_split(met))
                ended, arrays, fresh, sweep = [], [], [], False
                if never:  # their own dependents are decided in the next round
                    gone = await store.dependency_never(*_split(never))
                    cancelled += gone
                    ended = [j for j, _, arr in gone if arr is None]
                    arrays = sorted({arr for _, _, arr in gone if arr is not None})
        out.cancelled = len(cancelled)
        if cancelled:
            await self._announce_never(cancelled)
        if out.met or out.cancelled:
            log.info("dependencies: %d jobs may start, %d cancelled (never satisfied)",
                     out.met, out.cancelled,
                     extra={"event": "dependencies", "met": out.met, "cancelled": out.cancelled})
        return out

    async def _announce_never(self, cancelled: list[tuple[int, int, int | None]]) -> None:
        events: list[Event] = [
            JobFinished(job_id=j, attempt=a, worker_id=None, state=str(JobState.CANCELLED),
                        reason=NEVER_SATISFIED) for j, a, arr in cancelled if arr is None]
        per_array: dict[int, int] = {}
        for _, _, arr in cancelled:
            if arr is not None:
                per_array[arr] = per_array.get(arr, 0) + 1
        events += [JobUpdated(job_id=arr, attempt=1, change="cancel", reason=NEVER_SATISFIED,
                              array=True, count=n) for arr, n in per_array.items()]
        await self._emit(events)


def _split(items: Iterable[tuple[int, bool]]) -> tuple[list[int], list[int]]:
    jobs: list[int] = []
    arrays: list[int] = []
    for dependent, is_array in items:
        (arrays if is_array else jobs).append(dependent)
    return jobs, arrays

