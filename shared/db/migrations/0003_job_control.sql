-- Job control and accounting: begin times, retries, requeue requests, and one row per attempt.
--
-- The allocations table becomes `attempts`: it already held one row per placed attempt (its
-- worker, CPUs, memory and whether its capacity was given back); it now also records how the
-- attempt went (start and end, state, exit code, signal, peak RSS, CPU seconds), like sacct.

ALTER TABLE allocations RENAME TO attempts;
ALTER INDEX allocations_unreleased RENAME TO attempts_unreleased;
ALTER TABLE attempts
    ADD COLUMN started_at   timestamptz,
    ADD COLUMN finished_at  timestamptz,
    ADD COLUMN state        text CHECK (state IS NULL OR state IN (
                                'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL',
                                'OUT_OF_MEMORY')),
    ADD COLUMN reason       text,
    ADD COLUMN exit_code    integer,
    ADD COLUMN signal       integer,
    ADD COLUMN peak_rss_kb  bigint CHECK (peak_rss_kb IS NULL OR peak_rss_kb >= 0),
    ADD COLUMN cpu_user_s   double precision CHECK (cpu_user_s IS NULL OR cpu_user_s >= 0),
    ADD COLUMN cpu_system_s double precision CHECK (cpu_system_s IS NULL OR cpu_system_s >= 0);

ALTER TABLE jobs
    ADD COLUMN begin_at          timestamptz,
    ADD COLUMN retries           integer NOT NULL DEFAULT 0 CHECK (retries BETWEEN 0 AND 10),
    ADD COLUMN retry_delay_s     integer NOT NULL DEFAULT 0 CHECK (retry_delay_s >= 0),
    ADD COLUMN retries_used      integer NOT NULL DEFAULT 0 CHECK (retries_used >= 0),
    ADD COLUMN requeue_requested boolean NOT NULL DEFAULT false;

-- The scheduler promotes jobs whose begin time has come, and sleeps until the next one, from
-- this index alone: it never scans the pending queue for them.
CREATE INDEX jobs_begin_at ON jobs (begin_at) WHERE state = 'PENDING' AND reason = 'BeginTime';
