"""The users' controls over their jobs, as Slurm users know them: scancel, scontrol hold /
release / requeue / update. Each is a guarded statement first; when the guard does not match,
the job is read again to say exactly why (404, or 409 naming its state and what would work).

A statement that did not match because the job moved meanwhile (a cancel racing the job's own
start, a requeue racing its end) is tried again a few times against the new state.
"""

from __future__ import annotations

from shared.db.jobs import Job
from shared.errors import InvalidTransition, NotFound
from shared.events import JobFinished, JobRequeued, JobUpdated
from shared.lifecycle.groups import GroupOps
from shared.lifecycle.policy import Role, check_priority
from shared.lifecycle.store import Changes
from shared.states import JobState

RACE_TRIES = 3


class Lifecycle(GroupOps):
    async def _current(self, job_id: int) -> Job:
        job = await self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    async def cancel(self, job_id: int, reason: str = "cancelled by user") -> Job:
        """A job that has not started is CANCELLED at once (its capacity and launch
        withdrawn); a RUNNING one is stopped by its executor (SIGTERM, grace, SIGKILL) and
        comes back RUNNING with `cancel_requested` set."""
        for _ in range(RACE_TRIES):
            job = await self._current(job_id)
            if job.state.terminal:
                raise InvalidTransition(f"job {job_id} is already {job.state}")
            done = await self.store.cancel_unstarted(job_id, reason)
            if done is not None:
                await self._emit(
                    [JobFinished(job_id=done.id, attempt=done.attempt, worker_id=done.worker_id,
                                 state=str(done.state), reason=reason)],
                    release=[self.slot(done)] if done.worker_id else [],
                    withdraw=[self.slot(done)] if done.worker_id else [],
                    wake=str(job_id))
                return done
            running = await self.store.request_stop(job_id, cancel=True)
            if running is not None:
                await self._control(running, requeue=False)
                return running
        raise InvalidTransition(f"job {job_id} kept changing state; try again")

    async def hold(self, job_id: int) -> Job:
        """PENDING -> PENDING (Held): the scheduler passes it by until it is released."""
        done = await self.store.hold(job_id)
        if done is None:
            job = await self._current(job_id)
            raise InvalidTransition(
                f"job {job_id} is {job.state}; only a PENDING job can be held"
                + (f" (requeue job {job_id} to start it over)"
                   if job.state is JobState.RUNNING or job.state.terminal else ""))
        await self._emit([JobUpdated(job_id=done.id, attempt=done.attempt, change="hold",
                                     reason=done.reason)])
        return done

    async def release(self, job_id: int) -> Job:
        """A held job waits again for its begin time or its turn (a job that is not held is
        left as it is)."""
        done = await self.store.release(job_id)
        if done is None:
            job = await self._current(job_id)
            raise InvalidTransition(f"job {job_id} is {job.state}; only a held PENDING job can "
                                    "be released")
        await self._emit([JobUpdated(job_id=done.id, attempt=done.attempt, change="release",
                                     reason=done.reason)], wake=str(job_id))
        return done

    async def requeue(self, job_id: int) -> Job:
        """A finished job starts over as a new PENDING attempt; a RUNNING one is stopped by its
        executor first (SIGTERM, grace, SIGKILL), then starts over."""
        for _ in range(RACE_TRIES):
            done = await self.store.requeue(job_id)
            if done is not None:
                await self._emit([JobRequeued(job_id=done.id, attempt=done.attempt)],
                                 wake=str(job_id))
                return done
            running = await self.store.request_stop(job_id, cancel=False)
            if running is not None:
                if running.cancel_requested:
                    raise InvalidTransition(f"job {job_id} is being cancelled; it cannot be "
                                            "requeued until it has ended")
                await self._control(running, requeue=True)
                return running
            job = await self._current(job_id)
            if job.state in (JobState.PENDING, JobState.ALLOCATED):
                raise InvalidTransition(f"job {job_id} is {job.state}; only a RUNNING or "
                                        "finished job can be requeued")
        raise InvalidTransition(f"job {job_id} kept changing state; try again")

    async def update(self, job_id: int, changes: Changes, *, role: Role) -> Job:
        """scontrol update of a PENDING job (priority, time limit, CPUs, memory, name, begin
        time); the scheduler sees the new values at its next pass."""
        if "priority" in changes.set and changes.priority is not None:
            check_priority(changes.priority, role)
        done = await self.store.update(job_id, changes)
        if done is None:
            job = await self._current(job_id)
            raise InvalidTransition(f"job {job_id} is {job.state}; only a PENDING job can be "
                                    "updated")
        await self._emit([JobUpdated(job_id=done.id, attempt=done.attempt, change="update",
                                     reason=done.reason)], wake=str(job_id))
        return done
