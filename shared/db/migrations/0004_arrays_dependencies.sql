-- Job arrays, dependencies, and the #SBATCH options that say where a job runs and writes.
--
-- An array is one submission of N elements. Each element is a job row of its own (own id,
-- state, attempts) carrying `array_job_id` and `array_task_id`; the array's id is the id of its
-- first element, so `12` names the array and `12_3` one element. What all elements share (the
-- script and environment, which may be large) is stored once, in `job_arrays`; an element's
-- `script` is NULL and reads come from there.
--
-- A throttled array (`%N`) keeps the elements beyond its limit PENDING with the sticky reason
-- JobArrayTaskLimit; the scheduler lets the next ones in as running ones end, reading only the
-- two array indexes below (never the whole queue).
--
-- A dependency belongs to the submission (a job, or a whole array): one row in `dependencies`
-- with its expression and whether any (`?`) or all (`,`) of its edges must be met, and one row
-- per edge (kind, target) in `dependency_edges`, each waiting, met or never to be met. The
-- scheduler re-evaluates only the edges whose target just changed (from events), plus a sweep
-- as a safety net.

CREATE TABLE job_arrays (
    id           bigint      PRIMARY KEY,          -- = the first element's job id
    user_name    text        NOT NULL,
    spec         text        NOT NULL,             -- as submitted, e.g. "0-99:2%8"
    throttle     integer     CHECK (throttle IS NULL OR throttle >= 1),
    task_count   integer     NOT NULL CHECK (task_count >= 1),
    task_min     integer     NOT NULL,
    task_max     integer     NOT NULL,
    task_step    integer     NOT NULL DEFAULT 1,
    script       text        NOT NULL,
    env          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    submitted_at timestamptz NOT NULL DEFAULT now()
);

-- Elements point at their array (not at a job row): the array's record is job_arrays. No
-- foreign key: a 100,000-element insert would check it 100,000 times, and the one statement
-- that writes both keeps them together.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_array_job_id_fkey;
ALTER TABLE jobs ALTER COLUMN script DROP NOT NULL;
ALTER TABLE jobs ADD CONSTRAINT jobs_script_or_array
    CHECK (script IS NOT NULL OR array_job_id IS NOT NULL);
ALTER TABLE jobs
    ADD COLUMN workdir     text,   -- --chdir: where the script runs (else submit_dir)
    ADD COLUMN stdout_path text,   -- --output pattern (%j %A %a %x %u %N), relative to workdir
    ADD COLUMN stderr_path text;   -- --error pattern

-- Live and waiting elements of each array, by state and reason: the throttle's count of what
-- runs, and the dependency checks on a whole array ("any element not yet ended?"), are index
-- probes.
CREATE INDEX jobs_array_state ON jobs (array_job_id, state, reason)
    WHERE array_job_id IS NOT NULL;
-- Elements waiting for their array's throttle, in index order: the next ones to let in, and
-- (with a skip scan) which arrays have any.
CREATE INDEX jobs_array_waiting ON jobs (array_job_id, array_task_id)
    WHERE state = 'PENDING' AND reason = 'JobArrayTaskLimit';

CREATE TABLE dependencies (
    dependent_id bigint  PRIMARY KEY,             -- a job id, or an array id (all elements)
    is_array     boolean NOT NULL,
    expr         text    NOT NULL,
    any_of       boolean NOT NULL,                -- "?": one met edge is enough
    state        text    NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'met', 'never')),
    user_name    text    NOT NULL,
    name         text    NOT NULL,                -- for singleton
    resolved_at  timestamptz
);

CREATE TABLE dependency_edges (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dependent_id    bigint  NOT NULL REFERENCES dependencies (dependent_id) ON DELETE CASCADE,
    kind            text    NOT NULL CHECK (kind IN ('after', 'afterany', 'afterok',
                                                     'afternotok', 'singleton')),
    target_id       bigint,                        -- a job (or element) id; NULL for singleton
    target_is_array boolean NOT NULL DEFAULT false, -- target_id names a whole array
    target_array_id bigint,                        -- the array an element target belongs to
    state           text    NOT NULL DEFAULT 'waiting'
                    CHECK (state IN ('waiting', 'met', 'never')),
    UNIQUE (dependent_id, kind, target_id, target_is_array)
);

CREATE INDEX dependency_edges_target ON dependency_edges (target_id) WHERE state = 'waiting';
CREATE INDEX dependency_edges_target_array ON dependency_edges (target_array_id)
    WHERE state = 'waiting' AND target_array_id IS NOT NULL;
CREATE INDEX dependency_edges_singleton ON dependency_edges (dependent_id)
    WHERE state = 'waiting' AND kind = 'singleton';
CREATE INDEX dependencies_singleton ON dependencies (user_name, name)
    WHERE state = 'waiting';
-- singleton: is an earlier job of this user and name still in the system?
CREATE INDEX jobs_active_user_name ON jobs (user_name, name, id)
    WHERE state IN ('PENDING', 'ALLOCATED', 'RUNNING');

-- The scheduler's queue holds only jobs it may place: those waiting for a person, a condition
-- or their array's throttle are not in it (the list is shared/states.py's STICKY_REASONS, as
-- the `pending_jobs` query spells it), so 100,000 throttled elements cost a pass nothing.
DROP INDEX jobs_pending_order;
CREATE INDEX jobs_placeable ON jobs (priority DESC, id)
    WHERE state = 'PENDING'
      AND reason NOT IN ('BeginTime', 'Dependency', 'Held', 'JobArrayTaskLimit');
