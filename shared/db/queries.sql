-- Every SQL statement the services run, by name (loaded by shared/db/queries.py).

-- name: insert_job
-- With an idempotency key ($14, with the request's digest $15) a second insert of the same key
-- by the same user inserts nothing and returns no row; get_job_by_key then finds the first.
INSERT INTO jobs (name, user_name, script, cpus, memory_mb, time_limit_s, env, submit_dir,
                  partition, requeue, priority, dependency, state, reason, idempotency_key,
                  request_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'PENDING', $13, $14, $15)
ON CONFLICT (user_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: get_job_by_key
SELECT * FROM jobs WHERE user_name = $1 AND idempotency_key = $2;

-- name: get_job
SELECT * FROM jobs WHERE id = $1;

-- name: transition_job
-- The guarded state change: it happens only if the job is still at `attempt` and in one of the
-- allowed source states ($8), which the state machine derives from the target state.
UPDATE jobs SET
    state        = $3,
    reason       = $4,
    worker_id    = CASE WHEN $3 = 'PENDING' THEN NULL ELSE coalesce($5, worker_id) END,
    exit_code    = coalesce($6, exit_code),
    signal       = coalesce($7, signal),
    allocated_at = CASE WHEN $3 = 'ALLOCATED' THEN now()
                        WHEN $3 = 'PENDING' THEN NULL ELSE allocated_at END,
    started_at   = CASE WHEN $3 = 'RUNNING' THEN now() ELSE started_at END,
    finished_at  = CASE WHEN $3 = ANY($9::text[]) THEN now() ELSE finished_at END,
    updated_at   = now()
WHERE id = $1 AND attempt = $2 AND state = ANY($8::text[])
RETURNING *;

-- name: requeue_job
-- A new attempt: the only way out of a terminal state. Guarded by the attempt being requeued.
UPDATE jobs SET
    state = 'PENDING', reason = $3, attempt = attempt + 1, worker_id = NULL,
    exit_code = NULL, signal = NULL, cancel_requested = false,
    allocated_at = NULL, started_at = NULL, finished_at = NULL, updated_at = now()
WHERE id = $1 AND attempt = $2 AND state = ANY($4::text[])
RETURNING *;

-- name: worker_joined
-- Upsert the durable record of a worker incarnation the registry has just announced.
INSERT INTO workers (id, incarnation, hostname, state, drain, cpus, memory_mb, labels,
                     joined_at, left_at, left_reason, last_heartbeat, updated_at)
VALUES ($1, $2, $3, $4, $4 = 'draining', $5, $6, $7, $8, NULL, NULL, $8, now())
ON CONFLICT (id) DO UPDATE SET
    incarnation = EXCLUDED.incarnation, hostname = EXCLUDED.hostname, state = EXCLUDED.state,
    drain = EXCLUDED.drain, cpus = EXCLUDED.cpus, memory_mb = EXCLUDED.memory_mb,
    labels = EXCLUDED.labels, joined_at = EXCLUDED.joined_at, left_at = NULL,
    left_reason = NULL, last_heartbeat = EXCLUDED.last_heartbeat, updated_at = now()
WHERE workers.incarnation IS DISTINCT FROM EXCLUDED.incarnation
   OR workers.state IS DISTINCT FROM EXCLUDED.state;

-- name: worker_left
-- Guarded by incarnation: a late write about an old incarnation never downs a new one.
UPDATE workers SET state = 'down', left_at = $3, left_reason = $4, updated_at = now()
WHERE id = $1 AND incarnation = $2 AND state <> 'down';

-- name: worker_set_drain
UPDATE workers SET
    drain = $2,
    state = CASE WHEN state = 'down' THEN state WHEN $2 THEN 'draining' ELSE 'ready' END,
    updated_at = now()
WHERE id = $1
RETURNING *;

-- name: worker_heartbeats
-- Batch refresh of last_heartbeat for live workers: ids $1, times $2 (parallel arrays).
UPDATE workers AS w SET last_heartbeat = v.at
FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at)
WHERE w.id = v.id AND w.last_heartbeat IS DISTINCT FROM v.at;

-- name: list_workers
SELECT * FROM workers ORDER BY id;

-- name: get_worker
SELECT * FROM workers WHERE id = $1;

-- name: pending_jobs
-- The scheduler's queue, one page at a time (keyset on priority desc, id asc).
-- Held jobs (and jobs waiting on dependencies or a begin time) are not candidates.
SELECT id, attempt, cpus, coalesce(memory_mb, 0) AS memory_mb, priority, reason,
       extract(epoch FROM now() - submitted_at)::float8 AS waited_s
FROM jobs
WHERE state = 'PENDING'
  AND (reason IS NULL OR reason NOT IN ('Held', 'Dependency', 'BeginTime'))
  AND (priority, -id) < ($2::bigint, -($3::bigint))
ORDER BY priority DESC, id
LIMIT $1;

-- name: allocate_jobs
-- PostgreSQL first: record the placements the scheduler decided, guarded per job (still PENDING,
-- same attempt); returns only the jobs this call won, with their allocation rows written.
WITH plan AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[]) AS p(id, attempt, worker_id)
), won AS (
    UPDATE jobs j SET state = 'ALLOCATED', reason = NULL, worker_id = p.worker_id,
                      allocated_at = now(), updated_at = now()
    FROM plan p
    WHERE j.id = p.id AND j.attempt = p.attempt AND j.state = 'PENDING'
    RETURNING j.id, j.attempt, j.worker_id, j.cpus, coalesce(j.memory_mb, 0) AS memory_mb
), rows AS (
    INSERT INTO allocations (job_id, attempt, worker_id, cpus, memory_mb)
    SELECT id, attempt, worker_id, cpus, memory_mb FROM won
    ON CONFLICT (job_id, attempt) DO UPDATE
        SET worker_id = EXCLUDED.worker_id, cpus = EXCLUDED.cpus,
            memory_mb = EXCLUDED.memory_mb, allocated_at = now(), released_at = NULL
    RETURNING job_id
)
SELECT won.* FROM won JOIN rows ON rows.job_id = won.id;

-- name: unallocate_jobs
-- Roll back placements whose Redis step found no room: back to PENDING, same attempt (nothing
-- ran), allocation rows released.
WITH back AS (
    UPDATE jobs j SET state = 'PENDING', reason = $3, worker_id = NULL, allocated_at = NULL,
                      updated_at = now()
    FROM unnest($1::bigint[], $2::int[]) AS p(id, attempt)
    WHERE j.id = p.id AND j.attempt = p.attempt AND j.state = 'ALLOCATED'
    RETURNING j.id, j.attempt
)
UPDATE allocations a SET released_at = now()
FROM back WHERE a.job_id = back.id AND a.attempt = back.attempt AND a.released_at IS NULL
RETURNING a.job_id;

-- name: set_pending_reasons
UPDATE jobs j SET reason = p.reason, updated_at = now()
FROM unnest($1::bigint[], $2::text[]) AS p(id, reason)
WHERE j.id = p.id AND j.state = 'PENDING' AND j.reason IS DISTINCT FROM p.reason
  AND j.reason NOT IN ('Held', 'Dependency', 'BeginTime');

-- name: start_job
-- The executor's fence: only the worker the attempt was allocated to may start it, once.
UPDATE jobs SET state = 'RUNNING', started_at = now(), updated_at = now()
WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'ALLOCATED'
RETURNING *;

-- name: finish_job
-- RUNNING -> a terminal state, guarded by attempt and worker, and the allocation row released,
-- in one statement (a data-modifying CTE runs whether or not it is referenced).
WITH done AS (
    UPDATE jobs SET state = $4, exit_code = $5, signal = $6, reason = $7, finished_at = now(),
                    updated_at = now()
    WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'RUNNING'
    RETURNING *
), released AS (
    UPDATE allocations a SET released_at = now()
    FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt AND a.released_at IS NULL
)
SELECT * FROM done;

-- name: cancel_unstarted
-- Cancel a job that has not started (PENDING or ALLOCATED) at once, allocation row released;
-- returns the job (worker_id still set for an ALLOCATED one, to release it in Redis too).
WITH done AS (
    UPDATE jobs SET state = 'CANCELLED', cancel_requested = true, finished_at = now(),
                    updated_at = now()
    WHERE id = $1 AND state IN ('PENDING', 'ALLOCATED')
    RETURNING *
), released AS (
    UPDATE allocations a SET released_at = now()
    FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt AND a.released_at IS NULL
)
SELECT * FROM done;

-- name: request_cancel
-- A running job is cancelled by its executor: record the request (survives restarts).
UPDATE jobs SET cancel_requested = true, updated_at = now()
WHERE id = $1 AND state = 'RUNNING'
RETURNING *;

-- name: hand_back_job
-- An ALLOCATED job its executor will not start (shutting down): back to PENDING, same attempt,
-- allocation row released.
WITH done AS (
    UPDATE jobs SET state = 'PENDING', reason = 'Priority', worker_id = NULL,
                    allocated_at = NULL, updated_at = now()
    WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'ALLOCATED'
    RETURNING *
), released AS (
    UPDATE allocations a SET released_at = now()
    FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt AND a.released_at IS NULL
)
SELECT * FROM done;

-- name: jobs_on_worker
SELECT * FROM jobs WHERE worker_id = $1 AND state = ANY($2::text[]) ORDER BY id;

-- name: list_jobs
-- Newest first; keyset pagination on id. NULL filters match everything.
SELECT * FROM jobs
WHERE ($1::text[] IS NULL OR state = ANY($1::text[]))
  AND ($2::text IS NULL OR user_name = $2)
  AND ($3::text IS NULL OR name = $3)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5;

-- name: queue_stats
SELECT state, coalesce(reason, '') AS reason, count(*) AS n, coalesce(sum(cpus), 0) AS cpus
FROM jobs
WHERE state IN ('PENDING', 'ALLOCATED', 'RUNNING') OR finished_at > now() - interval '1 day'
GROUP BY state, reason;

-- name: unreleased_allocations
-- What Redis's allocation records must mirror, with each job's state.
SELECT a.job_id, a.attempt, a.worker_id, a.cpus, a.memory_mb,
       extract(epoch FROM now() - a.allocated_at)::float8 AS age_s,
       j.state, j.attempt AS job_attempt
FROM allocations a JOIN jobs j ON j.id = a.job_id
WHERE a.released_at IS NULL;

-- name: release_orphan_allocation
-- An allocation row left unreleased although its attempt is no longer ALLOCATED or RUNNING.
UPDATE allocations a SET released_at = now()
WHERE a.job_id = $1 AND a.attempt = $2 AND a.released_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = a.job_id AND j.attempt = a.attempt
                  AND j.state IN ('ALLOCATED', 'RUNNING'))
RETURNING a.job_id;

-- name: active_jobs
SELECT *, extract(epoch FROM now() - coalesce(allocated_at, submitted_at))::float8 AS age_s
FROM jobs WHERE state IN ('ALLOCATED', 'RUNNING') ORDER BY id;

-- name: lost_workers
-- Workers the registry declared gone, and not back, for longer than the grace period.
SELECT id FROM workers
WHERE state = 'down' AND left_at < now() - make_interval(secs => $1);

-- name: fail_on_lost_worker
-- RUNNING on a worker that is gone: NODE_FAIL (guarded by attempt and worker), allocation row
-- released in the same statement.
WITH done AS (
    UPDATE jobs SET state = 'NODE_FAIL', reason = $4, finished_at = now(), updated_at = now()
    WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'RUNNING'
    RETURNING *
), released AS (
    UPDATE allocations a SET released_at = now()
    FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt AND a.released_at IS NULL
)
SELECT * FROM done;

-- name: worker_drain_flags
SELECT id FROM workers WHERE drain;
