-- Partitions, per-user limits and fair share.
--
-- A partition is a named set of workers chosen by their labels, with its own time limits, job
-- width limit, priority tier and allowed users. One partition is the default (jobs submitted
-- without one go there); `default` (every worker) exists from the start. A job names one or
-- several partitions ("a,b": any of them); its `partition` column is that list, never NULL.

CREATE TABLE partitions (
    name                text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    selector            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    default_time_limit  integer     CHECK (default_time_limit IS NULL OR default_time_limit > 0),
    max_time_limit      integer     CHECK (max_time_limit IS NULL OR max_time_limit > 0),
    max_cpus_per_job    integer     CHECK (max_cpus_per_job IS NULL OR max_cpus_per_job > 0),
    tier                integer     NOT NULL DEFAULT 0,
    allowed_users       text[],
    -- each user's limits within the partition (NULL: none)
    max_running_cpus_per_user integer CHECK (max_running_cpus_per_user IS NULL
                                             OR max_running_cpus_per_user > 0),
    max_pending_jobs_per_user integer CHECK (max_pending_jobs_per_user IS NULL
                                             OR max_pending_jobs_per_user > 0),
    is_default          boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- at most one default partition
CREATE UNIQUE INDEX partitions_one_default ON partitions (is_default) WHERE is_default;
INSERT INTO partitions (name, is_default) VALUES ('default', true);

UPDATE jobs SET partition = 'default' WHERE partition IS NULL;
ALTER TABLE jobs ALTER COLUMN partition SET DEFAULT 'default',
                 ALTER COLUMN partition SET NOT NULL;

-- Per-user limits (a QoS in Slurm's terms) and fair-share weight. No row: no limit, 1 share.
CREATE TABLE user_limits (
    user_name           text        PRIMARY KEY,
    max_running_cpus    integer     CHECK (max_running_cpus IS NULL OR max_running_cpus > 0),
    max_pending_jobs    integer     CHECK (max_pending_jobs IS NULL OR max_pending_jobs > 0),
    shares              integer     NOT NULL DEFAULT 1 CHECK (shares > 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Each user's past usage in CPU-seconds, decayed with a half-life: the value as of updated_at.
-- Finished attempts are added once (attempts.accounted), by the scheduler's periodic roll-up.
CREATE TABLE user_usage (
    user_name           text        PRIMARY KEY,
    usage_cpu_s         float8      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- attempts that ended before this migration are history, not usage (true for them, then false
-- for every new row: no table rewrite)
ALTER TABLE attempts ADD COLUMN accounted boolean NOT NULL DEFAULT true;
ALTER TABLE attempts ALTER COLUMN accounted SET DEFAULT false;
CREATE INDEX attempts_unaccounted ON attempts (job_id)
    WHERE NOT accounted AND finished_at IS NOT NULL;

-- The scheduler's queue, per user and partition list: a pass reads the head of each group
-- (a skip scan finds the groups), so its cost grows with the groups and what it places, not
-- with the number of pending jobs.
DROP INDEX jobs_placeable;
-- (-priority, id) ascending is priority-then-submit order, and one row comparison on it is one
-- index range scan: the next page of a group after its cursor.
CREATE INDEX jobs_queue ON jobs (user_name, partition, (-priority), id)
    WHERE state = 'PENDING'
      AND reason NOT IN ('BeginTime', 'Dependency', 'Held', 'JobArrayTaskLimit');
-- limits: a user's running CPUs (their pending jobs are counted on jobs_active_user_name)
CREATE INDEX jobs_active_user ON jobs (user_name) INCLUDE (cpus, started_at)
    WHERE state IN ('ALLOCATED', 'RUNNING');
