"""Every Redis key the system uses, built in one place under the hash-tagged prefix.

All keys share one hash tag (default `{scns}:`) so that multi-key Lua scripts stay legal on Redis
Cluster: they all hash to one slot. Nothing else in the code base spells a key.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_TYPES = (
    "worker-joined",
    "worker-left",
    "job-submitted",
    "job-allocated",
    "job-started",
    "job-finished",
    "job-requeued",
    "job-updated",
)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "{scns}:"

    # --- workers -------------------------------------------------------------------------
    def worker_lease(self, worker_id: str) -> str:
        """The worker's own heartbeat record (hash, TTL = SCNS_WORKER_TTL_S); the seeds'
        `worker:{id}`. Written only by the worker's heartbeat client."""
        return f"{self.prefix}worker:{worker_id}"

    def member(self, worker_id: str) -> str:
        """The registry's record of a worker (hash, no TTL): state, incarnation, capacity."""
        return f"{self.prefix}member:{worker_id}"

    @property
    def workers_known(self) -> str:
        """Every worker id that has sent a heartbeat and is not yet retired (set)."""
        return f"{self.prefix}workers:known"

    @property
    def workers_live(self) -> str:
        """Workers the registry has announced and not yet declared gone (set)."""
        return f"{self.prefix}workers:live"

    @property
    def workers_drained(self) -> str:
        """Admin drain flags; survive a worker's restart like Slurm's DRAIN (set)."""
        return f"{self.prefix}workers:drained"

    # --- capacity and allocations --------------------------------------------------------
    def worker_alloc(self, worker_id: str) -> str:
        """Allocated cpus / memory_mb on one worker (hash)."""
        return f"{self.prefix}alloc:{worker_id}"

    def worker_alloc_pattern(self) -> str:
        return self.pattern()[:-1] + "alloc:*"

    @property
    def allocations(self) -> str:
        """Per-job allocation records: job id -> `worker|cpus|memory_mb|attempt` (hash)."""
        return f"{self.prefix}allocations"

    @property
    def alloc_epoch(self) -> str:
        """Present once the allocation records have been (re)built from PostgreSQL; nothing is
        placed while it is missing (see allocate.lua)."""
        return f"{self.prefix}alloc-epoch"

    @property
    def allocated_cpus(self) -> str:
        """Cluster-wide allocated CPUs (the seeds' `resource:allocated_cpus`)."""
        return f"{self.prefix}resource:allocated_cpus"

    @property
    def allocated_memory_mb(self) -> str:
        return f"{self.prefix}resource:allocated_memory_mb"

    @property
    def total_cpus(self) -> str:
        """Sum of live workers' CPUs, maintained by the registry on join/leave."""
        return f"{self.prefix}resource:total_cpus"

    @property
    def total_memory_mb(self) -> str:
        return f"{self.prefix}resource:total_memory_mb"

    # --- events --------------------------------------------------------------------------
    def stream(self, event_type: str) -> str:
        return f"{self.prefix}stream:{event_type}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}stream:dead-letter"

    def dedup(self, group: str, event_id: str) -> str:
        return f"{self.prefix}dedup:{group}:{event_id}"

    def wakeup(self, topic: str) -> str:
        """Pub/sub channel used only as a wake-up hint (at most once)."""
        return f"{self.prefix}wake:{topic}"

    # --- dispatch, control and output ---------------------------------------------------
    def arq_queue(self, worker_id: str) -> str:
        """The worker's arq queue (a sorted set of arq job ids)."""
        return f"{self.prefix}arq:queue:{worker_id}"

    def arq_job_id(self, job_id: int, attempt: int) -> str:
        """arq job ids encode job and attempt, so a repeat enqueue of one attempt is refused and
        a new attempt is never blocked by the old one's id; the prefix keeps two clusters (or
        two test runs) sharing one Redis apart."""
        return f"{self.prefix}{job_id}:{attempt}"

    def control(self, worker_id: str) -> str:
        """A worker's control stream: cancel requests travel here, not through arq's abort."""
        return f"{self.prefix}stream:control:{worker_id}"

    def job_output(self, job_id: int, attempt: int, stream: str) -> str:
        """Chunks of a job's stdout or stderr, shipped by the executor (a stream)."""
        return f"{self.prefix}log:{job_id}:{attempt}:{stream}"

    def reconcile_report(self, request_id: str) -> str:
        return f"{self.prefix}reconcile:report:{request_id}"

    # --- coordination --------------------------------------------------------------------
    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def pattern(self) -> str:
        """SCAN pattern matching every key under this prefix (for tests and tooling)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return escaped + "*"
