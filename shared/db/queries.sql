-- Every SQL statement the services run, by name (loaded by shared/db/queries.py).
--
-- A statement that writes a job names its lifecycle operation (`-- transition: OP`) and guards
-- on `state IN {from:OP}`; a target state passed as a parameter is checked against `{to:OP}`.
-- Both are filled in from shared/states.py's table at load time (shared/db/queries.py), and
-- tests/unit/test_transitions.py checks every statement against that table. Only the lifecycle
-- module (shared/lifecycle) runs the statements that carry a transition.

-- ===================================== jobs: the lifecycle ====================================

-- name: insert_job
-- transition: submit
-- With an idempotency key ($14, with the request's digest $15) a second insert of the same key
-- by the same user inserts nothing and returns no row; get_job_by_key then finds the first.
-- A job that may start only later ($16) waits with reason BeginTime.
INSERT INTO jobs (name, user_name, script, cpus, memory_mb, time_limit_s, env, submit_dir,
                  partition, requeue, priority, dependency, state, reason, idempotency_key,
                  request_digest, begin_at, retries, retry_delay_s)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'PENDING',
        CASE WHEN $13 = 'Priority' AND $16::timestamptz > now() THEN 'BeginTime' ELSE $13 END,
        $14, $15, $16, $17, $18)
ON CONFLICT (user_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: allocate_jobs
-- transition: place
-- PostgreSQL first: record the placements the scheduler decided, guarded per job (still PENDING
-- at the same attempt, and not held or waiting since the scheduler read it); returns only the
-- jobs this call won, with their attempt rows written.
WITH plan AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[]) AS p(id, attempt, worker_id)
), won AS (
    UPDATE jobs j SET state = 'ALLOCATED', reason = NULL, worker_id = p.worker_id,
                      allocated_at = now(), updated_at = now()
    FROM plan p
    WHERE j.id = p.id AND j.attempt = p.attempt AND j.state IN {from:place}
      AND j.reason NOT IN {sticky}
    RETURNING j.id, j.attempt, j.worker_id, j.cpus, coalesce(j.memory_mb, 0) AS memory_mb
), rows AS (
    INSERT INTO attempts (job_id, attempt, worker_id, cpus, memory_mb)
    SELECT id, attempt, worker_id, cpus, memory_mb FROM won
    ON CONFLICT (job_id, attempt) DO UPDATE
        SET worker_id = EXCLUDED.worker_id, cpus = EXCLUDED.cpus,
            memory_mb = EXCLUDED.memory_mb, allocated_at = now(), released_at = NULL
    RETURNING job_id
)
SELECT won.* FROM won JOIN rows ON rows.job_id = won.id;

-- name: hand_back_jobs
-- transition: hand_back
-- Placements that will not start (the Redis step found no room, the executor is shutting down or
-- its worker was lost): back to PENDING, same attempt (nothing ran), capacity given back.
-- Guarded per job by attempt and worker.
WITH back AS (
    UPDATE jobs j SET state = 'PENDING', reason = $4, worker_id = NULL, allocated_at = NULL,
                      updated_at = now()
    FROM unnest($1::bigint[], $2::int[], $3::text[]) AS p(id, attempt, worker_id)
    WHERE j.id = p.id AND j.attempt = p.attempt AND j.worker_id = p.worker_id
      AND j.state IN {from:hand_back}
    RETURNING j.*, p.worker_id AS from_worker
), released AS (
    UPDATE attempts a SET released_at = now()
    FROM back WHERE a.job_id = back.id AND a.attempt = back.attempt AND a.released_at IS NULL
)
SELECT * FROM back;

-- name: start_job
-- transition: start
-- The executor's fence: only the worker the attempt was allocated to may start it, once.
UPDATE jobs SET state = 'RUNNING', started_at = now(), updated_at = now()
WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state IN {from:start}
RETURNING *;

-- name: finish_job
-- transition: finish
-- The end of a RUNNING attempt ($4), guarded by attempt and worker, in one statement: the job
-- either ends with it or becomes a new PENDING attempt, and the attempt's row records how it
-- went and gives its capacity back. A new attempt follows when the user asked for a requeue,
-- or when the caller's policy says so ($8: after how many seconds; $9: it is a retry, counted
-- against the job's retries), as for a --requeue job whose node failed. A cancel request wins
-- over both: the job ends, and a node failure met while it was being cancelled is CANCELLED.
-- (The SET expressions read the row as it was; `attempts` is read as it was before the
-- statement, for the attempt's start.)
WITH done AS (
    UPDATE jobs j SET
        state        = CASE WHEN NOT j.cancel_requested
                                 AND (j.requeue_requested OR $8::float8 IS NOT NULL)
                            THEN 'PENDING'
                            WHEN j.cancel_requested AND $4 = 'NODE_FAIL' THEN 'CANCELLED'
                            ELSE $4 END,
        attempt      = j.attempt + CASE WHEN NOT j.cancel_requested
                                             AND (j.requeue_requested OR $8 IS NOT NULL)
                                        THEN 1 ELSE 0 END,
        reason       = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL) THEN
                                CASE WHEN j.cancel_requested AND $4 = 'NODE_FAIL'
                                     THEN 'cancelled' ELSE $7::text END
                            WHEN NOT j.requeue_requested AND $8 > 0 THEN 'BeginTime'
                            ELSE 'Priority' END,
        begin_at     = CASE WHEN NOT j.cancel_requested AND NOT j.requeue_requested
                                 AND $8 IS NOT NULL
                            THEN now() + make_interval(secs => $8) ELSE j.begin_at END,
        retries_used = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN j.retries_used
                            WHEN j.requeue_requested THEN 0
                            WHEN $9::boolean THEN j.retries_used + 1
                            ELSE j.retries_used END,
        exit_code    = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN $5::int END,
        signal       = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN $6::int END,
        worker_id    = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN j.worker_id END,
        allocated_at = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN j.allocated_at END,
        started_at   = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN j.started_at END,
        finished_at  = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR $8 IS NOT NULL)
                                 THEN now() END,
        requeue_requested = false,
        updated_at   = now()
    WHERE j.id = $1 AND j.attempt = $2 AND j.worker_id = $3 AND j.state IN {from:finish}
      AND $4::text IN {to:finish}
    RETURNING j.*, CASE WHEN j.cancel_requested AND $4 = 'NODE_FAIL' THEN 'CANCELLED'
                        ELSE $4 END AS attempt_state
), acct AS (
    UPDATE attempts a SET
        released_at = coalesce(a.released_at, now()), started_at = before.started_at,
        finished_at = now(), state = done.attempt_state,
        reason = CASE WHEN done.attempt_state <> $4 THEN 'cancelled' ELSE $7 END,
        exit_code = $5, signal = $6, peak_rss_kb = $10::bigint, cpu_user_s = $11::float8,
        cpu_system_s = $12::float8
    FROM done JOIN jobs before ON before.id = done.id
    WHERE a.job_id = done.id AND a.attempt = $2
)
SELECT * FROM done;

-- name: cancel_unstarted
-- transition: cancel
-- Cancel a job that has not started (PENDING or ALLOCATED) at once, its capacity given back;
-- returns the job (worker_id still set for an ALLOCATED one, to release it in Redis too).
WITH done AS (
    UPDATE jobs SET state = 'CANCELLED', reason = $2, cancel_requested = true,
                    finished_at = now(), updated_at = now()
    WHERE id = $1 AND state IN {from:cancel}
    RETURNING *
), acct AS (
    UPDATE attempts a SET released_at = coalesce(a.released_at, now()), finished_at = now(),
                          state = 'CANCELLED', reason = $2
    FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt
)
SELECT * FROM done;

-- name: request_stop
-- transition: request_stop
-- A RUNNING job is stopped by its executor: record the request (it survives restarts and is
-- re-sent by the reconciler). $2: cancel (wins over an earlier requeue request) or requeue (not
-- once a cancel was asked for).
UPDATE jobs SET cancel_requested = cancel_requested OR $2,
                requeue_requested = NOT $2 AND NOT cancel_requested,
                updated_at = now()
WHERE id = $1 AND state IN {from:request_stop}
RETURNING *;

-- name: hold_job
-- transition: hold
UPDATE jobs SET reason = 'Held', updated_at = now()
WHERE id = $1 AND state IN {from:hold}
RETURNING *;

-- name: release_job
-- transition: release
-- A held job waits again for what it waited for before: its begin time, or its turn.
UPDATE jobs SET reason = CASE WHEN reason <> 'Held' THEN reason
                              WHEN begin_at > now() THEN 'BeginTime'
                              ELSE 'Priority' END,
                updated_at = now()
WHERE id = $1 AND state IN {from:release}
RETURNING *;

-- name: update_job
-- transition: update
-- scontrol update of a PENDING job: each field changes only when its flag is set. A new begin
-- time re-decides whether the job waits for it (a held job stays held).
UPDATE jobs SET
    priority     = CASE WHEN $2 THEN $3::int ELSE priority END,
    time_limit_s = CASE WHEN $4 THEN $5::int ELSE time_limit_s END,
    cpus         = CASE WHEN $6 THEN $7::int ELSE cpus END,
    memory_mb    = CASE WHEN $8 THEN $9::bigint ELSE memory_mb END,
    name         = CASE WHEN $10 THEN $11::text ELSE name END,
    begin_at     = CASE WHEN $12 THEN $13::timestamptz ELSE begin_at END,
    reason       = CASE WHEN NOT $12 OR reason IN ('Held', 'Dependency') THEN reason
                        WHEN $13::timestamptz > now() THEN 'BeginTime'
                        WHEN reason = 'BeginTime' THEN 'Priority'
                        ELSE reason END,
    updated_at   = now()
WHERE id = $1 AND state IN {from:update}
RETURNING *;

-- name: set_pending_reasons
-- transition: reason
UPDATE jobs j SET reason = p.reason, updated_at = now()
FROM unnest($1::bigint[], $2::text[]) AS p(id, reason)
WHERE j.id = p.id AND j.state IN {from:reason} AND j.reason IS DISTINCT FROM p.reason
  AND j.reason NOT IN {sticky};

-- name: promote_due
-- transition: reason
-- Jobs whose begin time has come join the queue; and how long until the next one does. Both
-- come from the jobs_begin_at index: the pending queue is not scanned.
WITH due AS (
    UPDATE jobs SET reason = 'Priority', updated_at = now()
    WHERE state IN {from:reason} AND reason = 'BeginTime' AND begin_at <= now()
    RETURNING id
)
SELECT (SELECT count(*) FROM due) AS promoted,
       (SELECT extract(epoch FROM min(begin_at) - now())::float8 FROM jobs
        WHERE state = 'PENDING' AND reason = 'BeginTime' AND begin_at > now()) AS next_in_s;

-- name: requeue_job
-- transition: requeue
-- A finished job starts over as a new attempt, with its retries again.
UPDATE jobs SET
    state = 'PENDING', reason = 'Priority', attempt = attempt + 1, worker_id = NULL,
    exit_code = NULL, signal = NULL, cancel_requested = false, requeue_requested = false,
    retries_used = 0, allocated_at = NULL, started_at = NULL, finished_at = NULL,
    updated_at = now()
WHERE id = $1 AND state IN {from:requeue}
RETURNING *;

-- ========================================= jobs: reads ========================================

-- name: get_job_by_key
SELECT * FROM jobs WHERE user_name = $1 AND idempotency_key = $2;

-- name: get_job
SELECT * FROM jobs WHERE id = $1;

-- name: pending_jobs
-- The scheduler's queue, one page at a time (keyset on priority desc, id asc). Held jobs, and
-- jobs waiting on dependencies or a begin time, are not candidates.
SELECT id, attempt, cpus, coalesce(memory_mb, 0) AS memory_mb, priority, reason,
       extract(epoch FROM now() - submitted_at)::float8 AS waited_s
FROM jobs
WHERE state = 'PENDING'
  AND reason NOT IN {sticky}
  AND (priority, -id) < ($2::bigint, -($3::bigint))
ORDER BY priority DESC, id
LIMIT $1;

-- name: jobs_on_worker
SELECT * FROM jobs WHERE worker_id = $1 AND state = ANY($2::text[]) ORDER BY id;

-- name: list_jobs
-- Newest first; keyset pagination on id. NULL filters match everything. A time window ($6, $7)
-- keeps the jobs that were in the system during it (submitted before its end, not finished
-- before its start), like sacct -S/-E. With the current attempt's accounting.
SELECT j.*, a.peak_rss_kb, a.cpu_user_s, a.cpu_system_s
FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt
WHERE ($1::text[] IS NULL OR j.state = ANY($1::text[]))
  AND ($2::text IS NULL OR j.user_name = $2)
  AND ($3::text IS NULL OR j.name = $3)
  AND ($4::bigint IS NULL OR j.id < $4)
  AND ($6::timestamptz IS NULL OR j.finished_at IS NULL OR j.finished_at >= $6)
  AND ($7::timestamptz IS NULL OR j.submitted_at <= $7)
ORDER BY j.id DESC
LIMIT $5;

-- name: job_attempts
-- Accounting, one row per attempt that was placed; the current attempt's start comes from the
-- job while it runs.
SELECT a.attempt, a.worker_id, a.cpus, a.memory_mb, a.allocated_at,
       coalesce(a.started_at, CASE WHEN j.attempt = a.attempt THEN j.started_at END)
           AS started_at,
       a.finished_at,
       coalesce(a.state, CASE WHEN j.attempt = a.attempt AND j.state IN ('ALLOCATED', 'RUNNING')
                              THEN j.state END) AS state,
       a.reason, a.exit_code, a.signal, a.peak_rss_kb, a.cpu_user_s, a.cpu_system_s
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.job_id = $1
ORDER BY a.attempt;

-- name: queue_stats
SELECT state, coalesce(reason, '') AS reason, count(*) AS n, coalesce(sum(cpus), 0) AS cpus
FROM jobs
WHERE state IN ('PENDING', 'ALLOCATED', 'RUNNING') OR finished_at > now() - interval '1 day'
GROUP BY state, reason;

-- ====================================== the reconciler ========================================

-- name: unreleased_attempts
-- What Redis's allocation records must mirror, with each job's state.
SELECT a.job_id, a.attempt, a.worker_id, a.cpus, a.memory_mb,
       extract(epoch FROM now() - a.allocated_at)::float8 AS age_s,
       j.state, j.attempt AS job_attempt
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.released_at IS NULL;

-- name: release_orphan_attempt
-- An attempt row left holding capacity although its attempt is no longer ALLOCATED or RUNNING.
UPDATE attempts a SET released_at = now()
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

-- ========================================== workers ===========================================

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

-- name: worker_drain_flags
SELECT id FROM workers WHERE drain;
