-- Safe retries of a submit: a client that lost the answer to POST /api/v1/jobs sends the same
-- Idempotency-Key again and gets the job its first request made, never a second one.
-- The digest is of the request, so a key reused for a different request is refused.
ALTER TABLE jobs ADD COLUMN idempotency_key text;
ALTER TABLE jobs ADD COLUMN request_digest text;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (user_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
