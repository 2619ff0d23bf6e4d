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
-- A job that may start only later ($16) waits with reason BeginTime; $22 is the schedule that
-- made it, if one did. A job that names no partition ($9 NULL: a schedule's job made before
-- partitions existed) goes to the default one.
INSERT INTO jobs (name, user_name, script, cpus, memory_mb, time_limit_s, env, submit_dir,
                  partition, requeue, priority, dependency, state, reason, idempotency_key,
                  request_digest, begin_at, retries, retry_delay_s, workdir, stdout_path,
                  stderr_path, schedule_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
           coalesce($9::text, (SELECT name FROM partitions WHERE is_default), 'default'),
           $10, $11, $12, 'PENDING',
        CASE WHEN $13 = 'Priority' AND $16::timestamptz > now() THEN 'BeginTime' ELSE $13 END,
        $14, $15, $16, $17, $18, $19, $20, $21, $22)
ON CONFLICT (user_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: insert_jobs
-- transition: submit
-- Jobs without an idempotency key, many in one statement: the submits a gateway receives
-- together are one commit. Each row as insert_job makes it; the caller pairs the rows it gets
-- back with its requests by their content (identical requests are interchangeable).
INSERT INTO jobs (name, user_name, script, cpus, memory_mb, time_limit_s, env, submit_dir,
                  partition, requeue, priority, dependency, state, reason, begin_at, retries,
                  retry_delay_s, workdir, stdout_path, stderr_path, schedule_id)
SELECT i.name, i.user_name, i.script, i.cpus, i.memory_mb, i.time_limit_s, i.env, i.submit_dir,
       coalesce(i.partition, (SELECT name FROM partitions WHERE is_default), 'default'),
       i.requeue, i.priority, i.dependency, 'PENDING',
       CASE WHEN i.reason = 'Priority' AND i.begin_at > now() THEN 'BeginTime' ELSE i.reason END,
       i.begin_at, i.retries, i.retry_delay_s, i.workdir, i.stdout_path, i.stderr_path,
       i.schedule_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::int[],
            $7::jsonb[], $8::text[], $9::text[], $10::boolean[], $11::int[], $12::text[],
            $13::text[], $14::timestamptz[], $15::int[], $16::int[], $17::text[], $18::text[],
            $19::text[], $20::bigint[]) WITH ORDINALITY
     AS i(name, user_name, script, cpus, memory_mb, time_limit_s, env, submit_dir, partition,
          requeue, priority, dependency, reason, begin_at, retries, retry_delay_s, workdir,
          stdout_path, stderr_path, schedule_id, n)
ORDER BY i.n
RETURNING *;

-- name: insert_array
-- transition: submit
-- An array in one statement: its record (script and environment, once) and every element, as
-- set-based inserts; the first element's id is the array's id, the others take the identity's
-- next values (nextval() spelled per row would cost a catalog lookup each). Parameters as
-- insert_job ($22 the schedule), plus $23 the spec, $24 the throttle, $25 the indexes
-- (ascending), $26 the step.
-- Elements past the throttle wait with reason JobArrayTaskLimit; the scheduler lets them in.
-- Only the first element carries the idempotency key: a second insert of the same key fails as
-- a whole (a unique violation), and the caller then finds the first. Returns the array's id
-- only (reading 100,000 rows back would cost as much as writing them).
WITH arr AS (
    INSERT INTO job_arrays (id, user_name, spec, throttle, task_count, task_min, task_max,
                            task_step, script, env)
    VALUES (nextval(pg_get_serial_sequence('jobs', 'id')), $2, $23, $24,
            cardinality($25::int[]), $25[1], $25[cardinality($25::int[])], $26, $3, $7)
    RETURNING id
), first AS (
    INSERT INTO jobs (id, name, user_name, script, cpus, memory_mb, time_limit_s, env,
                      submit_dir, partition, requeue, priority, dependency, state, reason,
                      idempotency_key, request_digest, begin_at, retries, retry_delay_s,
                      workdir, stdout_path, stderr_path, array_job_id, array_task_id,
                      schedule_id)
    SELECT arr.id, $1, $2, NULL, $4, $5, $6, '{}'::jsonb, $8,
           coalesce($9::text, (SELECT name FROM partitions WHERE is_default), 'default'),
           $10, $11, $12, 'PENDING',
           CASE WHEN $13 <> 'Priority' THEN $13
                WHEN $16::timestamptz > now() THEN 'BeginTime'
                ELSE 'Priority' END,
           $14, $15, $16, $17, $18, $19, $20, $21, arr.id, $25[1], $22
    FROM arr
), rest AS (
    INSERT INTO jobs (name, user_name, script, cpus, memory_mb, time_limit_s, env,
                      submit_dir, partition, requeue, priority, dependency, state, reason,
                      begin_at, retries, retry_delay_s, workdir, stdout_path, stderr_path,
                      array_job_id, array_task_id, schedule_id)
    SELECT $1, $2, NULL, $4, $5, $6, '{}'::jsonb, $8,
           coalesce($9::text, (SELECT name FROM partitions WHERE is_default), 'default'),
           $10, $11, $12, 'PENDING',
           CASE WHEN $13 <> 'Priority' THEN $13
                WHEN $24::int IS NOT NULL AND t.ord >= $24 THEN 'JobArrayTaskLimit'
                WHEN $16::timestamptz > now() THEN 'BeginTime'
                ELSE 'Priority' END,
           $16, $17, $18, $19, $20, $21, arr.id, t.task, $22
    FROM arr, unnest($25[2:]) WITH ORDINALITY AS t(task, ord)
)
SELECT id FROM arr;

-- name: allocate_jobs
-- transition: place
-- PostgreSQL first: record the placements the scheduler decided, guarded per job (still PENDING
-- at the same attempt, and not held or waiting since the scheduler read it); returns only the
-- jobs this call won, as their attempt rows were written (each won job writes one: an insert,
-- or the update of the row a placement handed back left). The rows come from the INSERT's
-- RETURNING, not from joining it back to the UPDATE's: under the generic plan a prepared
-- statement settles on, unnest($1) is guessed at 10 rows and that join became a nested loop,
-- a third of the statement's cost for a 500-job page (and quadratic in the page).
WITH plan AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[]) AS p(id, attempt, worker_id)
), won AS (
    UPDATE jobs j SET state = 'ALLOCATED', reason = NULL, worker_id = p.worker_id,
                      allocated_at = now(), updated_at = now()
    FROM plan p
    WHERE j.id = p.id AND j.attempt = p.attempt AND j.state IN {from:place}
      AND j.reason NOT IN {sticky}
    RETURNING j.id, j.attempt, j.worker_id, j.cpus, coalesce(j.memory_mb, 0) AS memory_mb
)
INSERT INTO attempts (job_id, attempt, worker_id, cpus, memory_mb)
SELECT id, attempt, worker_id, cpus, memory_mb FROM won
ON CONFLICT (job_id, attempt) DO UPDATE
    SET worker_id = EXCLUDED.worker_id, cpus = EXCLUDED.cpus,
        memory_mb = EXCLUDED.memory_mb, allocated_at = now(), released_at = NULL
RETURNING job_id AS id, attempt, worker_id, cpus, memory_mb;

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

-- name: start_jobs
-- transition: start
-- The executor's fence: only the worker the attempt was allocated to may start it, once. The
-- launches an executor takes together start in one statement (one commit): each row guarded on
-- its own. An element comes with its array's record (script, environment, indexes).
UPDATE jobs j SET state = 'RUNNING', started_at = now(), updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::text[]) AS s(id, attempt, worker_id)
WHERE j.id = s.id AND j.attempt = s.attempt AND j.worker_id = s.worker_id
  AND j.state IN {from:start}
RETURNING j.*, CASE WHEN j.array_job_id IS NOT NULL THEN
                   (SELECT to_jsonb(a) FROM job_arrays a WHERE a.id = j.array_job_id) END
               AS array_meta;

-- name: finish_jobs
-- transition: finish
-- The end of RUNNING attempts (f.state), each guarded by attempt and worker, in one statement
-- (the attempts an executor sees end together: one commit). Each job either ends with its
-- attempt or becomes a new PENDING attempt, and the attempt's row records how it went and gives
-- its capacity back. A new attempt follows when the user asked for a requeue, or when the
-- caller's policy says so (f.again_s: after how many seconds; f.retry: it is a retry, counted
-- against the job's retries), as for a --requeue job whose node failed. A cancel request wins
-- over both: the job ends, and a node failure met while it was being cancelled is CANCELLED.
-- (The SET expressions read the row as it was; `attempts` is read as it was before the
-- statement, for the attempt's start.)
WITH f AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[], $6::int[],
                         $7::text[], $8::float8[], $9::boolean[], $10::bigint[], $11::float8[],
                         $12::float8[])
        AS f(id, attempt, worker_id, state, exit_code, signal, reason, again_s, retry,
             peak_rss_kb, cpu_user_s, cpu_system_s)
), done AS (
    UPDATE jobs j SET
        state        = CASE WHEN NOT j.cancel_requested
                                 AND (j.requeue_requested OR f.again_s IS NOT NULL)
                            THEN 'PENDING'
                            WHEN j.cancel_requested AND f.state = 'NODE_FAIL' THEN 'CANCELLED'
                            ELSE f.state END,
        attempt      = j.attempt + CASE WHEN NOT j.cancel_requested
                                             AND (j.requeue_requested OR f.again_s IS NOT NULL)
                                        THEN 1 ELSE 0 END,
        reason       = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL) THEN
                                CASE WHEN j.cancel_requested AND f.state = 'NODE_FAIL'
                                     THEN 'cancelled' ELSE f.reason END
                            WHEN NOT j.requeue_requested AND f.again_s > 0 THEN 'BeginTime'
                            ELSE 'Priority' END,
        begin_at     = CASE WHEN NOT j.cancel_requested AND NOT j.requeue_requested
                                 AND f.again_s IS NOT NULL
                            THEN now() + make_interval(secs => f.again_s) ELSE j.begin_at END,
        retries_used = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN j.retries_used
                            WHEN j.requeue_requested THEN 0
                            WHEN f.retry THEN j.retries_used + 1
                            ELSE j.retries_used END,
        exit_code    = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN f.exit_code END,
        signal       = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN f.signal END,
        worker_id    = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN j.worker_id END,
        allocated_at = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN j.allocated_at END,
        started_at   = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN j.started_at END,
        finished_at  = CASE WHEN j.cancel_requested
                                 OR NOT (j.requeue_requested OR f.again_s IS NOT NULL)
                                 THEN now() END,
        requeue_requested = false,
        updated_at   = now()
    FROM f
    WHERE j.id = f.id AND j.attempt = f.attempt AND j.worker_id = f.worker_id
      AND j.state IN {from:finish}
      AND f.state IN {to:finish}
    RETURNING j.*, CASE WHEN j.cancel_requested AND f.state = 'NODE_FAIL' THEN 'CANCELLED'
                        ELSE f.state END AS attempt_state
), acct AS (
    UPDATE attempts a SET
        released_at = coalesce(a.released_at, now()), started_at = before.started_at,
        finished_at = now(), state = done.attempt_state,
        reason = CASE WHEN done.attempt_state <> f.state THEN 'cancelled' ELSE f.reason END,
        exit_code = f.exit_code, signal = f.signal, peak_rss_kb = f.peak_rss_kb,
        cpu_user_s = f.cpu_user_s, cpu_system_s = f.cpu_system_s
    FROM done JOIN jobs before ON before.id = done.id JOIN f ON f.id = done.id
    WHERE a.job_id = done.id AND a.attempt = f.attempt
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

-- name: cancel_array_unstarted
-- transition: cancel
-- Every element of an array that has not started, in one statement. Returns how many, and the
-- ALLOCATED ones (their capacity and launches are withdrawn in Redis too).
WITH done AS (
    UPDATE jobs SET state = 'CANCELLED', reason = $2, cancel_requested = true,
                    finished_at = now(), updated_at = now()
    WHERE array_job_id = $1 AND state IN {from:cancel}
    RETURNING id, attempt, worker_id
), acct AS (
    UPDATE attempts a SET released_at = coalesce(a.released_at, now()), finished_at = now(),
                          state = 'CANCELLED', reason = $2
    FROM done WHERE done.worker_id IS NOT NULL AND a.job_id = done.id
                AND a.attempt = done.attempt
)
SELECT (SELECT count(*) FROM done) AS n,
       coalesce((SELECT array_agg(id ORDER BY id) FROM done WHERE worker_id IS NOT NULL),
                '{}') AS ids,
       coalesce((SELECT array_agg(attempt ORDER BY id) FROM done
                 WHERE worker_id IS NOT NULL), '{}') AS attempts,
       coalesce((SELECT array_agg(worker_id ORDER BY id) FROM done
                 WHERE worker_id IS NOT NULL), '{}') AS workers;

-- name: request_stop_array
-- transition: request_stop
-- The running elements of an array are stopped by their executors (a cancel).
UPDATE jobs SET cancel_requested = true, requeue_requested = false, updated_at = now()
WHERE array_job_id = $1 AND state IN {from:request_stop}
RETURNING *;

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

-- name: hold_array
-- transition: hold
-- Every pending element of an array, in one statement; returns how many.
WITH done AS (
    UPDATE jobs SET reason = 'Held', updated_at = now()
    WHERE array_job_id = $1 AND state IN {from:hold} AND reason IS DISTINCT FROM 'Held'
    RETURNING 1
)
SELECT count(*) AS n FROM done;

-- name: release_job
-- transition: release
-- A held job waits again for what it waited for before: its dependency, its array's throttle,
-- its begin time, or its turn.
UPDATE jobs j SET reason = CASE
        WHEN j.reason <> 'Held' THEN j.reason
        WHEN EXISTS (SELECT 1 FROM dependencies d
                     WHERE d.dependent_id = coalesce(j.array_job_id, j.id)
                       AND d.state = 'waiting') THEN 'Dependency'
        WHEN j.array_job_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM job_arrays a WHERE a.id = j.array_job_id AND a.throttle IS NOT NULL)
            THEN 'JobArrayTaskLimit'
        WHEN j.begin_at > now() THEN 'BeginTime'
        ELSE 'Priority' END,
    updated_at = now()
WHERE j.id = $1 AND j.state IN {from:release}
RETURNING *;

-- name: release_array
-- transition: release
-- Every held element of an array, in one statement (as release_job decides each).
WITH arr AS (
    SELECT a.throttle IS NOT NULL AS throttled,
           EXISTS (SELECT 1 FROM dependencies d WHERE d.dependent_id = a.id
                   AND d.state = 'waiting') AS waits
    FROM job_arrays a WHERE a.id = $1
), done AS (
    UPDATE jobs j SET reason = CASE WHEN arr.waits THEN 'Dependency'
                                    WHEN arr.throttled THEN 'JobArrayTaskLimit'
                                    WHEN j.begin_at > now() THEN 'BeginTime'
                                    ELSE 'Priority' END,
                      updated_at = now()
    FROM arr
    WHERE j.array_job_id = $1 AND j.state IN {from:release} AND j.reason = 'Held'
    RETURNING 1
)
SELECT count(*) AS n FROM done;

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
    reason       = CASE WHEN NOT $12 OR reason IN ('Held', 'Dependency', 'JobArrayTaskLimit')
                        THEN reason
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
-- A finished job starts over as a new attempt, with its retries again (an element of a
-- throttled array waits for its turn under the throttle).
UPDATE jobs SET
    state = 'PENDING', attempt = attempt + 1, worker_id = NULL,
    reason = CASE WHEN array_job_id IS NOT NULL AND EXISTS (
                      SELECT 1 FROM job_arrays a WHERE a.id = array_job_id
                      AND a.throttle IS NOT NULL) THEN 'JobArrayTaskLimit'
                  ELSE 'Priority' END,
    exit_code = NULL, signal = NULL, cancel_requested = false, requeue_requested = false,
    retries_used = 0, allocated_at = NULL, started_at = NULL, finished_at = NULL,
    updated_at = now()
WHERE id = $1 AND state IN {from:requeue}
RETURNING *;

-- name: promote_array_tasks
-- transition: reason
-- The next elements of throttled arrays take the room their throttle leaves ($1 arrays, $2
-- room in each), lowest index first, from the jobs_array_waiting index.
WITH pick AS (
    SELECT n.id FROM unnest($1::bigint[], $2::int[]) AS r(array_id, room)
    CROSS JOIN LATERAL (
        SELECT j.id FROM jobs j
        WHERE j.array_job_id = r.array_id AND j.state IN {from:reason}
          AND j.reason = 'JobArrayTaskLimit'
        ORDER BY j.array_task_id LIMIT greatest(r.room, 0)) n
)
UPDATE jobs j SET reason = CASE WHEN j.begin_at > now() THEN 'BeginTime' ELSE 'Priority' END,
                  updated_at = now()
FROM pick
WHERE j.id = pick.id AND j.state IN {from:reason} AND j.reason = 'JobArrayTaskLimit'
RETURNING j.id;

-- name: dependency_met
-- transition: reason
-- Jobs ($1) and arrays ($2) whose dependency is met join the queue (a throttled array's
-- elements wait for their throttle; a held one stays held and is released as usual).
UPDATE jobs j SET
    reason = CASE WHEN j.array_job_id IS NOT NULL AND EXISTS (
                       SELECT 1 FROM job_arrays a WHERE a.id = j.array_job_id
                       AND a.throttle IS NOT NULL) THEN 'JobArrayTaskLimit'
                  WHEN j.begin_at > now() THEN 'BeginTime'
                  ELSE 'Priority' END,
    updated_at = now()
WHERE j.id IN (SELECT id FROM jobs WHERE id = ANY($1::bigint[])
               UNION ALL
               SELECT id FROM jobs WHERE array_job_id = ANY($2::bigint[])
                 AND state IN {from:reason} AND reason = 'Dependency')
  AND j.state IN {from:reason} AND j.reason = 'Dependency'
RETURNING j.id;

-- name: dependency_never
-- transition: cancel
-- Jobs ($1) and arrays ($2) whose dependency can no longer be met are CANCELLED
-- (DependencyNeverSatisfied), held or not. Returns each, for its event and its own dependents.
UPDATE jobs j SET state = 'CANCELLED', reason = 'DependencyNeverSatisfied',
                  cancel_requested = true, finished_at = now(), updated_at = now()
WHERE j.id IN (SELECT id FROM jobs WHERE id = ANY($1::bigint[])
               UNION ALL
               SELECT id FROM jobs WHERE array_job_id = ANY($2::bigint[])
                 AND state IN {from:cancel})
  AND j.state IN {from:cancel} AND j.reason IS NOT NULL
RETURNING j.id, j.attempt, j.array_job_id;

-- ===================================== arrays and dependencies ==================================

-- name: throttled_arrays
-- Arrays with elements waiting for their throttle (a skip scan of jobs_array_waiting: one
-- probe per such array, however many elements wait), with the room each has: its throttle
-- less the elements that run, are placed, or wait only for their turn.
WITH RECURSIVE arrays AS (
    (SELECT array_job_id AS id FROM jobs
     WHERE state = 'PENDING' AND reason = 'JobArrayTaskLimit'
     ORDER BY array_job_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.array_job_id FROM jobs j
            WHERE j.state = 'PENDING' AND j.reason = 'JobArrayTaskLimit'
              AND j.array_job_id > a.id
            ORDER BY j.array_job_id LIMIT 1)
    FROM arrays a WHERE a.id IS NOT NULL
)
SELECT a.id, coalesce(ja.throttle, 2147483647)
             - (SELECT count(*) FROM jobs x
                WHERE x.array_job_id = a.id AND x.state IN ('ALLOCATED', 'RUNNING'))
             - (SELECT count(*) FROM jobs x
                WHERE x.array_job_id = a.id AND x.state = 'PENDING'
                  AND x.reason IN ('Priority', 'Resources', 'BeginTime')) AS room
FROM arrays a JOIN job_arrays ja ON ja.id = a.id
WHERE a.id IS NOT NULL;

-- name: lock_dependencies
-- Held until the resolver's transaction ends ('SCNSDEPS' as a number).
SELECT pg_advisory_xact_lock(5999725248122277971);

-- name: resolve_refs
-- Job references at submit ($1 ids, $2 element indexes or NULL): the job each names (NULL:
-- unknown), whether it names a whole array, and the array the job belongs to. Only the
-- submitting user's jobs ($3) are found: another user's job is as unknown as a missing one.
SELECT r.ord,
       CASE WHEN r.idx IS NULL THEN (SELECT j.id FROM jobs j WHERE j.id = r.id
                                     AND j.user_name = $3)
            ELSE (SELECT j.id FROM jobs j WHERE j.array_job_id = r.id
                  AND j.array_task_id = r.idx AND j.user_name = $3) END AS job_id,
       r.idx IS NULL AND EXISTS (SELECT 1 FROM job_arrays a WHERE a.id = r.id
                                 AND a.user_name = $3) AS is_array,
       CASE WHEN r.idx IS NULL THEN (SELECT j.array_job_id FROM jobs j WHERE j.id = r.id)
            ELSE r.id END AS array_id
FROM unnest($1::bigint[], $2::int[]) WITH ORDINALITY AS r(id, idx, ord)
ORDER BY r.ord;

-- name: insert_dependency
-- A submission's dependency ($1: the job, or the array, that waits) and its edges.
WITH d AS (
    INSERT INTO dependencies (dependent_id, is_array, expr, any_of, user_name, name)
    VALUES ($1, $2, $3, $4, $5, $6)
)
INSERT INTO dependency_edges (dependent_id, kind, target_id, target_is_array, target_array_id)
SELECT $1, e.kind, e.target_id, e.target_is_array, e.target_array_id
FROM unnest($7::text[], $8::bigint[], $9::boolean[], $10::bigint[])
    AS e(kind, target_id, target_is_array, target_array_id);

-- name: evaluate_edges
-- Decide the waiting edges that may have changed: those on jobs that ended or started ($1),
-- on arrays an element of which did ($2, and the arrays of $1's elements), singletons of the
-- same user and name as $1, and every edge of the dependents in $3 (new submissions); with $4
-- every waiting edge (the safety-net sweep). An edge decided (met or never) stays decided.
-- The rules are shared/dependencies.py's decide_job / decide_array.
WITH changed AS (
    SELECT id, array_job_id, user_name, name FROM jobs WHERE id = ANY($1::bigint[])
), arrays AS (
    SELECT array_job_id AS id FROM changed WHERE array_job_id IS NOT NULL
    UNION SELECT unnest($2::bigint[])
), touched AS (
    SELECT e.* FROM dependency_edges e
    WHERE e.state = 'waiting' AND e.target_id = ANY($1::bigint[])
    UNION
    SELECT e.* FROM dependency_edges e JOIN arrays a ON e.target_array_id = a.id
    WHERE e.state = 'waiting'
    UNION
    SELECT e.* FROM dependency_edges e
    JOIN dependencies d ON d.dependent_id = e.dependent_id AND d.state = 'waiting'
    JOIN (SELECT DISTINCT user_name, name FROM changed) c
      ON c.user_name = d.user_name AND c.name = d.name
    WHERE e.state = 'waiting' AND e.kind = 'singleton'
    UNION
    SELECT e.* FROM dependency_edges e
    WHERE e.state = 'waiting' AND (e.dependent_id = ANY($3::bigint[]) OR $4::boolean)
), decided AS (
    SELECT t.id,
        CASE
        WHEN t.kind = 'singleton' THEN
            CASE WHEN EXISTS (
                SELECT 1 FROM dependencies d JOIN jobs o
                  ON o.user_name = d.user_name AND o.name = d.name
                 AND o.state IN ('PENDING', 'ALLOCATED', 'RUNNING')
                 AND o.id < d.dependent_id
                WHERE d.dependent_id = t.dependent_id) THEN 'waiting' ELSE 'met' END
        WHEN t.target_is_array THEN
            CASE t.kind
            WHEN 'after' THEN
                CASE WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('PENDING', 'ALLOCATED'))
                     THEN 'waiting' ELSE 'met' END
            WHEN 'afterany' THEN
                CASE WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('PENDING', 'ALLOCATED', 'RUNNING'))
                     THEN 'waiting' ELSE 'met' END
            WHEN 'afterok' THEN
                CASE WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('FAILED', 'CANCELLED', 'TIMEOUT',
                                                  'NODE_FAIL', 'OUT_OF_MEMORY'))
                     THEN 'never'
                     WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('PENDING', 'ALLOCATED', 'RUNNING'))
                     THEN 'waiting' ELSE 'met' END
            ELSE  -- afternotok
                CASE WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('PENDING', 'ALLOCATED', 'RUNNING'))
                     THEN 'waiting'
                     WHEN EXISTS (SELECT 1 FROM jobs x WHERE x.array_job_id = t.target_id
                                  AND x.state IN ('FAILED', 'CANCELLED', 'TIMEOUT',
                                                  'NODE_FAIL', 'OUT_OF_MEMORY'))
                     THEN 'met' ELSE 'never' END
            END
        ELSE
            CASE
            WHEN j.state IS NULL THEN 'never'  -- the job is gone
            WHEN t.kind = 'after' THEN
                CASE WHEN j.state IN ('PENDING', 'ALLOCATED') THEN 'waiting' ELSE 'met' END
            WHEN j.state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL',
                                 'OUT_OF_MEMORY') THEN 'waiting'
            WHEN t.kind = 'afterany' THEN 'met'
            WHEN t.kind = 'afterok' THEN
                CASE WHEN j.state = 'COMPLETED' THEN 'met' ELSE 'never' END
            ELSE CASE WHEN j.state = 'COMPLETED' THEN 'never' ELSE 'met' END
            END
        END AS state
    FROM touched t LEFT JOIN jobs j ON j.id = t.target_id AND NOT t.target_is_array
), upd AS (
    UPDATE dependency_edges e SET state = d.state
    FROM decided d
    WHERE e.id = d.id AND d.state <> 'waiting' AND e.state = 'waiting'
    RETURNING e.dependent_id
)
SELECT DISTINCT dependent_id FROM upd;

-- name: settle_dependencies
-- The dependencies ($1) whose edges were just decided: met when all edges are (one, with
-- `?`), never when one can no longer be (all, with `?`). Returns those settled.
WITH overall AS (
    SELECT d.dependent_id,
           CASE WHEN d.any_of THEN
                    CASE WHEN bool_or(e.state = 'met') THEN 'met'
                         WHEN bool_and(e.state = 'never') THEN 'never' ELSE 'waiting' END
                ELSE
                    CASE WHEN bool_or(e.state = 'never') THEN 'never'
                         WHEN bool_and(e.state = 'met') THEN 'met' ELSE 'waiting' END
           END AS state
    FROM dependencies d JOIN dependency_edges e ON e.dependent_id = d.dependent_id
    WHERE d.dependent_id = ANY($1::bigint[]) AND d.state = 'waiting'
    GROUP BY d.dependent_id, d.any_of
)
UPDATE dependencies d SET state = o.state, resolved_at = now()
FROM overall o
WHERE d.dependent_id = o.dependent_id AND o.state <> 'waiting' AND d.state = 'waiting'
RETURNING d.dependent_id, d.is_array, d.state;

-- ========================================= jobs: reads ========================================

-- name: get_job_by_key
SELECT * FROM jobs WHERE user_name = $1 AND idempotency_key = $2;

-- name: get_job
-- With its array's record for an element (its script and environment live there). $2: the
-- owner the caller must be (NULL: anyone's job; another user's reads as no row).
SELECT j.*, (SELECT to_jsonb(a) FROM job_arrays a WHERE a.id = j.array_job_id) AS array_meta
FROM jobs j WHERE j.id = $1 AND ($2::text IS NULL OR j.user_name = $2);

-- name: job_progress
-- A job's current attempt and state, and nothing else (a followed log's end: services/gateway/
-- follow.py).
SELECT attempt, state FROM jobs WHERE id = $1;

-- name: get_element
SELECT j.*, (SELECT to_jsonb(a) FROM job_arrays a WHERE a.id = j.array_job_id) AS array_meta
FROM jobs j WHERE j.array_job_id = $1 AND j.array_task_id = $2
  AND ($3::text IS NULL OR j.user_name = $3);

-- name: array_summary
-- An array's record (without its script) and how many elements are in each state.
SELECT to_jsonb(a) - 'script' - 'env' AS meta,
       (SELECT coalesce(jsonb_object_agg(s.state, s.n), '{}'::jsonb)
        FROM (SELECT state, count(*) AS n FROM jobs WHERE array_job_id = a.id
              GROUP BY state) s) AS states
FROM job_arrays a WHERE a.id = $1;

-- name: jobs_on_worker
SELECT * FROM jobs WHERE worker_id = $1 AND state = ANY($2::text[]) ORDER BY id;

-- name: list_jobs
-- Newest first; keyset pagination on id. NULL filters match everything. A time window ($6, $7)
-- keeps the jobs that were in the system during it (submitted before its end, not finished
-- before its start), like sacct -S/-E. With the current attempt's accounting and an element's
-- array throttle. Each row is a job as the API lists it, under the API's names and in its
-- order (services/gateway/common.py, job_json), so the gateway sends it as it comes. Listings
-- never carry a script or an environment, so none is read (a page of 200 big scripts would be
-- megabytes read, decoded and thrown away).
SELECT j.id, j.name, j.user_name AS "user", j.state, j.reason, j.cpus, j.memory_mb,
       j.time_limit_s AS time_limit, j.worker_id, j.attempt, j.exit_code, j.signal,
       j.priority, j.requeue, j.cancel_requested, j.requeue_requested, j.retries,
       j.retry_delay_s, j.retries_used, j.array_job_id, j.array_task_id,
       CASE WHEN j.array_job_id IS NOT NULL THEN
           (SELECT ja.throttle FROM job_arrays ja WHERE ja.id = j.array_job_id)
       END AS array_throttle, j.dependency, j.partition, j.submit_dir, j.workdir,
       j.stdout_path AS output, j.stderr_path AS error, j.schedule_id, j.submitted_at,
       j.begin_at, j.allocated_at, j.started_at, j.finished_at, a.peak_rss_kb,
       CASE WHEN a.cpu_user_s IS NULL AND a.cpu_system_s IS NULL THEN NULL
            ELSE coalesce(a.cpu_user_s, 0) + coalesce(a.cpu_system_s, 0) END AS cpu_s
FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt
WHERE ($1::text[] IS NULL OR j.state = ANY($1::text[]))
  AND ($2::text IS NULL OR j.user_name = $2)
  AND ($3::text IS NULL OR j.name = $3)
  AND ($4::bigint IS NULL OR j.id < $4)
  AND ($6::timestamptz IS NULL OR j.finished_at IS NULL OR j.finished_at >= $6)
  AND ($7::timestamptz IS NULL OR j.submitted_at <= $7)
  AND ($8::bigint IS NULL OR j.array_job_id = $8)
  AND ($9::bigint IS NULL OR j.schedule_id = $9)
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
-- Workers the registry declared gone, and not back, for longer than the grace period (left_at
-- and now() both PostgreSQL's clock); with the departure they were declared gone by.
SELECT id, left_mark FROM workers
WHERE state = 'down' AND left_at < now() - make_interval(secs => $1);

-- ========================================== workers ===========================================

-- name: worker_joined
-- Upsert the durable record of a worker incarnation the registry has just announced. Times are
-- PostgreSQL's (shared/fencing.py): the registry's clock is never compared with now().
INSERT INTO workers (id, incarnation, hostname, state, drain, cpus, memory_mb, labels,
                     joined_at, left_at, left_reason, left_mark, last_heartbeat, updated_at)
VALUES ($1, $2, $3, $4, $4 = 'draining', $5, $6, $7, now(), NULL, NULL, NULL, now(), now())
ON CONFLICT (id) DO UPDATE SET
    incarnation = EXCLUDED.incarnation, hostname = EXCLUDED.hostname, state = EXCLUDED.state,
    drain = EXCLUDED.drain, cpus = EXCLUDED.cpus, memory_mb = EXCLUDED.memory_mb,
    labels = EXCLUDED.labels, joined_at = EXCLUDED.joined_at, left_at = NULL,
    left_reason = NULL, left_mark = NULL, last_heartbeat = EXCLUDED.last_heartbeat,
    updated_at = now()
WHERE workers.incarnation IS DISTINCT FROM EXCLUDED.incarnation
   OR workers.state IS DISTINCT FROM EXCLUDED.state;

-- name: worker_left
-- A departure, at PostgreSQL's now(): no earlier than the lease's expiry, which the registry
-- observed before writing this, so the reconciler's grace (lost_workers) counts from a time
-- every executor's fence is ahead of. $3 names the departure (the registry's record of it): a
-- new departure of the same incarnation (it left, came back, and PostgreSQL missed the return)
-- restarts the grace; repeating the same one changes nothing. Guarded by incarnation: a late
-- write about an old incarnation never downs a new one.
UPDATE workers SET state = 'down', left_at = now(), left_reason = $4, left_mark = $3,
                   updated_at = now()
WHERE id = $1 AND incarnation = $2
  AND (state <> 'down' OR left_mark IS DISTINCT FROM $3);

-- name: workers_lost_unseen
-- Workers PostgreSQL records as up that Redis has no record of at all, and whose last recorded
-- heartbeat is older than $2 seconds: Redis lost everything while they were gone, so no lease
-- lapsed for the registry to announce. Recorded down ('lost'), which starts the reconciler's
-- grace (lost_workers) like any other departure. $1: the ids Redis does not know.
UPDATE workers SET state = 'down', left_at = now(), left_reason = 'lost', left_mark = NULL,
                   updated_at = now()
WHERE id = ANY($1::text[]) AND state <> 'down'
  AND coalesce(last_heartbeat, joined_at, updated_at) < now() - make_interval(secs => $2)
RETURNING id;

-- name: worker_set_drain
UPDATE workers SET
    drain = $2,
    state = CASE WHEN state = 'down' THEN state WHEN $2 THEN 'draining' ELSE 'ready' END,
    updated_at = now()
WHERE id = $1
RETURNING *;

-- name: worker_heartbeats
-- The workers $1, seen by the registry with a renewed lease: last_heartbeat = now(), the time
-- PostgreSQL learnt of it (never a worker's own clock: workers_lost_unseen compares it with
-- now()). It lags the renewal by up to a sync, on the safe side.
UPDATE workers SET last_heartbeat = now() WHERE id = ANY($1::text[]) AND state <> 'down';

-- name: list_workers
SELECT * FROM workers ORDER BY id;

-- name: get_worker
SELECT * FROM workers WHERE id = $1;

-- name: worker_drain_flags
SELECT id FROM workers WHERE drain;

-- ========================================= API tokens =========================================

-- name: insert_token
-- $4: lifetime in seconds (NULL: it does not expire).
INSERT INTO tokens (id, user_name, role, digest, created_by, expires_at)
VALUES ($1, $2, $3, $5, $6,
        CASE WHEN $4::bigint IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END)
RETURNING id, user_name, role, created_at, created_by, expires_at, revoked_at,
          false AS expired;

-- name: find_token
-- The token a digest names, revoked or expired included (the caller says which it is).
SELECT id, user_name, role, created_at, created_by, expires_at, revoked_at,
       (expires_at IS NOT NULL AND expires_at <= now()) AS expired
FROM tokens WHERE digest = $1;

-- name: list_tokens
-- Newest first; keyset on (created_at, id). $1: one user's only (NULL: every user's); $3: the
-- cursor, the last id of the previous page (NULL: the first page; a token not found: none).
SELECT id, user_name, role, created_at, created_by, expires_at, revoked_at,
       (expires_at IS NOT NULL AND expires_at <= now()) AS expired
FROM tokens
WHERE ($1::text IS NULL OR user_name = $1)
  AND ($3::text IS NULL
       OR (created_at, id) < (SELECT c.created_at, c.id FROM tokens c WHERE c.id = $3))
ORDER BY created_at DESC, id DESC
LIMIT $2;

-- name: revoke_token
-- Idempotent: a token revoked earlier keeps its first revocation time.
UPDATE tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1
RETURNING id, user_name, role, created_at, created_by, expires_at, revoked_at,
          (expires_at IS NOT NULL AND expires_at <= now()) AS expired;

-- name: schedule_insert
-- A user's schedule names are unique (schedules_user_name): a second `nightly` is a conflict.
INSERT INTO schedules (name, user_name, cron, timezone, job_spec, enabled, next_run_at,
                       concurrency, catch_up, max_failures)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING *;

-- name: schedule_get
-- $2: the owner (NULL for an admin: anyone's).
SELECT * FROM schedules WHERE id = $1 AND ($2::text IS NULL OR user_name = $2);

-- name: schedule_by_name
SELECT * FROM schedules WHERE user_name = $1 AND name = $2;

-- name: schedule_list
-- By id; keyset pagination. NULL filters match everything. Listings leave out the job's script
-- and environment, so they are not read either.
SELECT id, name, user_name, cron, timezone, job_spec - 'script' - 'env' AS job_spec, enabled,
       concurrency, catch_up, max_failures, next_run_at, last_run_at, last_job_id, run_count,
       failure_count, consecutive_failures, disabled_reason, created_at, updated_at
FROM schedules
WHERE ($1::text IS NULL OR user_name = $1)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::bigint IS NULL OR id > $3)
ORDER BY id
LIMIT $4;

-- name: schedule_update
-- PATCH: the gateway merged and validated the whole schedule; $9 the next fire time when the
-- expression or the zone changed (NULL keeps it).
UPDATE schedules
SET name = $3, cron = $4, timezone = $5, job_spec = $6, concurrency = $7, catch_up = $8,
    next_run_at = coalesce($9, next_run_at), max_failures = $10, updated_at = now()
WHERE id = $1 AND ($2::text IS NULL OR user_name = $2)
RETURNING *;

-- name: schedule_enable
-- Enabling starts afresh: the failure streak is forgotten and the next fire time is the next
-- one from now (fire times while it was disabled are not caught up).
UPDATE schedules
SET enabled = true, disabled_reason = NULL, consecutive_failures = 0, next_run_at = $3,
    updated_at = now()
WHERE id = $1 AND ($2::text IS NULL OR user_name = $2)
RETURNING *;

-- name: schedule_disable
UPDATE schedules
SET enabled = false, disabled_reason = $3, updated_at = now()
WHERE id = $1 AND ($2::text IS NULL OR user_name = $2)
RETURNING *;

-- name: schedule_delete
-- Its runs go with it; its jobs stay (their schedule_id becomes NULL).
DELETE FROM schedules WHERE id = $1 AND ($2::text IS NULL OR user_name = $2) RETURNING id;

-- name: schedule_runs
-- History, newest first (keyset on id); a run's state is its job's final state once settled,
-- its job's current state before.
SELECT r.id, r.schedule_id, r.fire_at, r.kind, r.job_id, r.skipped, r.created_at,
       coalesce(r.state, j.state) AS state
FROM schedule_runs r LEFT JOIN jobs j ON j.id = r.job_id
WHERE r.schedule_id = $1 AND ($2::bigint IS NULL OR r.id < $2)
ORDER BY r.id DESC
LIMIT $3;

-- name: schedules_due
SELECT id FROM schedules WHERE enabled AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2;

-- name: schedule_next_due
SELECT min(next_run_at) FROM schedules WHERE enabled;

-- name: schedule_lock_due
-- The firing transaction's first step: the schedule, if it is still due and no other replica
-- is firing it right now (that one commits or rolls back; either way we need not wait).
SELECT * FROM schedules
WHERE id = $1 AND enabled AND next_run_at <= $2
FOR UPDATE SKIP LOCKED;

-- name: schedule_lock
SELECT * FROM schedules WHERE id = $1 AND ($2::text IS NULL OR user_name = $2) FOR UPDATE;

-- name: schedule_active_runs
-- The schedule's runs whose job (or, for an array, some element) has not ended.
SELECT r.job_id, EXISTS (SELECT 1 FROM job_arrays a WHERE a.id = r.job_id) AS is_array
FROM schedule_runs r
WHERE r.schedule_id = $1 AND r.job_id IS NOT NULL AND r.state IS NULL
  AND EXISTS (SELECT 1 FROM jobs j
              WHERE (j.id = r.job_id OR j.array_job_id = r.job_id)
                AND j.state NOT IN {terminal})
ORDER BY r.fire_at, r.id;

-- name: schedule_record_runs
-- A unique violation here (another replica recorded this fire time first) rolls back the
-- whole fire, its job included.
INSERT INTO schedule_runs (schedule_id, fire_at, kind, job_id, skipped)
SELECT $1, f, k, j, s
FROM unnest($2::timestamptz[], $3::text[], $4::bigint[], $5::text[]) AS t(f, k, j, s);

-- name: schedule_fired
-- $2 NULL (a manual run) keeps the next fire time.
UPDATE schedules
SET next_run_at = coalesce($2, next_run_at), last_run_at = coalesce($3, last_run_at),
    last_job_id = coalesce($4, last_job_id), run_count = run_count + $5, updated_at = now()
WHERE id = $1;

-- name: schedule_runs_ended
-- Runs whose job has ended for good (every element, for an array), oldest first.
SELECT r.id, r.schedule_id, r.fire_at, e.states
FROM schedule_runs r
CROSS JOIN LATERAL (
    SELECT array_agg(DISTINCT j.state) AS states, bool_and(j.state IN {terminal}) AS ended
    FROM jobs j WHERE j.id = r.job_id OR j.array_job_id = r.job_id
) e
WHERE r.job_id IS NOT NULL AND r.state IS NULL AND e.ended
ORDER BY r.schedule_id, r.fire_at, r.id
LIMIT $1;

-- name: schedule_settle_runs
-- Guarded: a run is settled once, whoever gets there first (what it returns is what counts).
UPDATE schedule_runs r SET state = s.state, settled_at = now()
FROM unnest($1::bigint[], $2::text[]) AS s(id, state)
WHERE r.id = s.id AND r.state IS NULL
RETURNING r.id, r.schedule_id, r.fire_at, r.job_id, r.state;

-- name: schedule_lock_many
SELECT * FROM schedules WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: schedule_set_counts
UPDATE schedules
SET failure_count = $2, consecutive_failures = $3, enabled = $4, disabled_reason = $5,
    updated_at = now()
WHERE id = $1;

-- name: schedule_unreplaced
-- Runs of `replace` schedules that a newer run replaced but that still go on with no stop
-- asked for (the cancel after the fire's commit was lost to a crash): cancelled again.
SELECT r.job_id, EXISTS (SELECT 1 FROM job_arrays a WHERE a.id = r.job_id) AS is_array
FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id
WHERE s.concurrency = 'replace' AND r.job_id IS NOT NULL AND r.state IS NULL
  AND r.job_id < s.last_job_id
  AND EXISTS (SELECT 1 FROM jobs j
              WHERE (j.id = r.job_id OR j.array_job_id = r.job_id)
                AND j.state NOT IN {terminal} AND NOT j.cancel_requested)
LIMIT 100;

-- ================================= event tails: who a job event is about =======================

-- name: job_directory
-- Owner, name and array place of the jobs a batch of events names (shared/tail.JobDirectory).
SELECT id, user_name, name, array_job_id, array_task_id FROM jobs WHERE id = ANY($1::bigint[]);

-- ======================================= gateway metrics ======================================

-- name: cluster_gauges
-- The gateway's /metrics gauges in one round trip (services/gateway/metrics.py): the jobs that
-- have not ended, counted with their CPUs per state and, for PENDING, per reason (a pending job
-- without one waits on Priority); then every worker's recorded state, one row each (merged there
-- with Redis's membership records, as GET /workers does).
SELECT 'jobs' AS kind, state,
       CASE WHEN state = 'PENDING' THEN coalesce(reason, 'Priority') ELSE '' END AS label,
       count(*) AS n, coalesce(sum(cpus), 0) AS cpus
FROM jobs
WHERE state IN ('PENDING', 'ALLOCATED', 'RUNNING')
GROUP BY 2, 3
UNION ALL
SELECT 'worker', state, id, 1, cpus FROM workers;

-- ============================ partitions, user limits, fair share =============================

-- name: partition_list
SELECT * FROM partitions ORDER BY tier DESC, name;

-- name: partition_get
SELECT * FROM partitions WHERE name = $1;

-- name: partition_lock
SELECT * FROM partitions WHERE name = $1 FOR UPDATE;

-- name: partition_insert
-- $8: make it the default (the previous default stops being one, in the same statement's
-- transaction: see partition_set_default)
INSERT INTO partitions (name, selector, default_time_limit, max_time_limit, max_cpus_per_job,
                        tier, allowed_users, is_default, max_running_cpus_per_user,
                        max_pending_jobs_per_user)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: partition_update
-- Every field is written (the caller merged the change into the current row).
UPDATE partitions SET selector = $2, default_time_limit = $3, max_time_limit = $4,
                      max_cpus_per_job = $5, tier = $6, allowed_users = $7, is_default = $8,
                      max_running_cpus_per_user = $9, max_pending_jobs_per_user = $10,
                      updated_at = now()
WHERE name = $1
RETURNING *;

-- name: partition_clear_default
UPDATE partitions SET is_default = false, updated_at = now()
WHERE is_default AND name <> $1;

-- name: partition_delete
DELETE FROM partitions WHERE name = $1 RETURNING name;

-- name: partition_jobs
-- Live jobs that name the partition (alone or in a list).
SELECT count(*) FROM jobs
WHERE state IN ('PENDING', 'ALLOCATED', 'RUNNING') AND $1 = ANY(string_to_array(partition, ','));

-- name: limits_get
SELECT l.user_name, l.max_running_cpus, l.max_pending_jobs, coalesce(l.shares, 1) AS shares,
       (SELECT count(*) FROM jobs WHERE state = 'PENDING' AND user_name = $1) AS pending_jobs,
       (SELECT coalesce(sum(cpus), 0) FROM jobs
        WHERE state IN ('ALLOCATED', 'RUNNING') AND user_name = $1) AS running_cpus
FROM (SELECT $1::text AS name) u LEFT JOIN user_limits l ON l.user_name = u.name;

-- name: limits_put
INSERT INTO user_limits (user_name, max_running_cpus, max_pending_jobs, shares)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_name) DO UPDATE SET max_running_cpus = EXCLUDED.max_running_cpus,
    max_pending_jobs = EXCLUDED.max_pending_jobs, shares = EXCLUDED.shares, updated_at = now();

-- name: limits_pending_all
SELECT user_name, max_pending_jobs FROM user_limits WHERE max_pending_jobs IS NOT NULL;

-- name: limits_pending_room
-- How many more jobs the user may have pending (NULL: no limit).
SELECT l.max_pending_jobs - (SELECT count(*) FROM jobs WHERE state = 'PENDING'
                                                        AND user_name = $1)
FROM user_limits l WHERE l.user_name = $1 AND l.max_pending_jobs IS NOT NULL;

-- name: partition_pending_of
-- A user's pending jobs that name the partition (alone or in a list).
SELECT count(*) FROM jobs
WHERE state = 'PENDING' AND user_name = $1 AND $2 = ANY(string_to_array(partition, ','));

-- name: active_of_users
-- What these users hold now, and where: per-partition CPU limits count it.
SELECT user_name, partition, worker_id, cpus FROM jobs
WHERE state IN ('ALLOCATED', 'RUNNING') AND user_name = ANY($1::text[]);

-- name: limits_cpu
-- The users with a running-CPU limit, and the CPUs they hold now.
SELECT l.user_name, l.max_running_cpus,
       (SELECT coalesce(sum(cpus), 0) FROM jobs
        WHERE state IN ('ALLOCATED', 'RUNNING') AND user_name = l.user_name) AS running_cpus
FROM user_limits l WHERE l.max_running_cpus IS NOT NULL;

-- name: queue_groups
-- The (user, partition list) groups of the scheduler's queue: a skip scan of jobs_queue, one
-- index probe per group, however many jobs each holds.
WITH RECURSIVE g AS (
    (SELECT user_name, partition FROM jobs
     WHERE state = 'PENDING' AND reason NOT IN {sticky}
     ORDER BY user_name, partition LIMIT 1)
    UNION ALL
    SELECT n.user_name, n.partition FROM g CROSS JOIN LATERAL (
        SELECT user_name, partition FROM jobs
        WHERE state = 'PENDING' AND reason NOT IN {sticky}
          AND (user_name, partition) > (g.user_name, g.partition)
        ORDER BY user_name, partition LIMIT 1) n
)
SELECT user_name, partition FROM g;

-- name: queue_heads
-- The next $5 jobs of each group after its cursor ($3 priority, $4 id): a group's order is its
-- jobs' own priority, then submission, i.e. (-priority, id), which jobs_queue holds in order.
SELECT j.id, j.attempt, j.cpus, coalesce(j.memory_mb, 0) AS memory_mb, j.priority, j.reason,
       j.user_name, j.partition, j.time_limit_s,
       extract(epoch FROM now() - j.submitted_at)::float8 AS waited_s
FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS g(u, p, prio, last)
CROSS JOIN LATERAL (
    SELECT * FROM jobs
    WHERE state = 'PENDING' AND reason NOT IN {sticky} AND user_name = g.u AND partition = g.p
      AND (-priority, id) > (-g.prio, g.last)
    ORDER BY -priority, id
    LIMIT $5) j;

-- name: fairshare_rollup
-- Finished attempts become usage once: CPUs x run time, decayed from their end to now with the
-- half-life $1 (s), added to the user's decayed total. Idempotent: an attempt is marked as it is
-- counted, in the same statement.
WITH done AS (
    UPDATE attempts a SET accounted = true
    FROM jobs j
    WHERE a.job_id = j.id AND NOT a.accounted AND a.finished_at IS NOT NULL
    RETURNING j.user_name,
              a.cpus * greatest(extract(epoch FROM a.finished_at
                                               - coalesce(a.started_at, a.finished_at)), 0)
              * power(0.5, greatest(extract(epoch FROM now() - a.finished_at), 0) / $1)
                  AS cpu_s
), per_user AS (
    SELECT user_name, sum(cpu_s) AS cpu_s FROM done GROUP BY user_name
)
INSERT INTO user_usage AS u (user_name, usage_cpu_s, updated_at)
SELECT user_name, cpu_s, now() FROM per_user
ON CONFLICT (user_name) DO UPDATE SET
    usage_cpu_s = u.usage_cpu_s
                  * power(0.5, greatest(extract(epoch FROM now() - u.updated_at), 0) / $1)
                  + EXCLUDED.usage_cpu_s,
    updated_at = now();

-- name: fairshare_usage
-- Every user with usage, running jobs or jobs in the queue: decayed usage as of now (half-life $1),
-- plus what their running jobs have used so far, their CPUs held and their shares.
WITH RECURSIVE pending_users AS (  -- those with jobs in the queue: a skip scan of jobs_queue
    (SELECT user_name FROM jobs WHERE state = 'PENDING' AND reason NOT IN {sticky}
     ORDER BY user_name LIMIT 1)
    UNION ALL
    SELECT n.user_name FROM pending_users p CROSS JOIN LATERAL (
        SELECT user_name FROM jobs
        WHERE state = 'PENDING' AND reason NOT IN {sticky} AND user_name > p.user_name
        ORDER BY user_name LIMIT 1) n
), running AS (
    SELECT user_name, sum(cpus) AS cpus,
           sum(cpus * greatest(extract(epoch FROM now() - coalesce(started_at, now())), 0))
               AS cpu_s
    FROM jobs WHERE state IN ('ALLOCATED', 'RUNNING') GROUP BY user_name
), usage AS (
    SELECT user_name,
           usage_cpu_s * power(0.5, greatest(extract(epoch FROM now() - updated_at), 0) / $1)
               AS cpu_s, updated_at
    FROM user_usage
), users AS (
    SELECT user_name FROM usage WHERE cpu_s >= 0.001
    UNION SELECT user_name FROM running
    UNION SELECT user_name FROM pending_users
)
SELECT users.user_name, coalesce(usage.cpu_s, 0) AS past_cpu_s,
       coalesce(running.cpu_s, 0)::float8 AS running_cpu_s,
       coalesce(running.cpus, 0)::bigint AS running_cpus, coalesce(l.shares, 1) AS shares,
       usage.updated_at
FROM users LEFT JOIN usage USING (user_name) LEFT JOIN running USING (user_name)
           LEFT JOIN user_limits l USING (user_name)
ORDER BY users.user_name;

-- name: active_on_workers
-- What occupies these workers, and for how long it may still (its time limit less its run so
-- far; NULL without a time limit): the explainer's start-time estimate.
SELECT worker_id, cpus, coalesce(memory_mb, 0) AS memory_mb,
       CASE WHEN time_limit_s IS NOT NULL THEN
           greatest(time_limit_s - extract(epoch FROM now() - coalesce(started_at, now())), 0)
       END::float8 AS ends_in_s
FROM jobs
WHERE state IN ('ALLOCATED', 'RUNNING') AND worker_id = ANY($1::text[]);

-- ====================================== scheduler demand ======================================

-- name: scheduler_demand
-- The autoscaling signal the scheduler exports (services/scheduler/demand.py), one round trip:
-- CPUs of PENDING jobs per reason (none recorded: Priority), of jobs holding CPUs (ALLOCATED,
-- RUNNING), and the CPUs ready workers offer per `pool` label ('' without one).
SELECT 'pending' AS kind, coalesce(reason, 'Priority') AS label, sum(cpus)::bigint AS cpus
FROM jobs WHERE state = 'PENDING' GROUP BY 2
UNION ALL
SELECT 'busy', '', coalesce(sum(cpus), 0)::bigint FROM jobs
WHERE state IN ('ALLOCATED', 'RUNNING')
UNION ALL
SELECT 'workers', coalesce(labels->>'pool', ''), sum(cpus)::bigint FROM workers
WHERE state = 'ready' GROUP BY 2;
