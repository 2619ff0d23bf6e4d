-- API tokens: who a caller is, and what they may do.
--
-- A token is random (256 bits), shown once when it is made, and stored only as its SHA-256
-- digest: a copy of this table does not let anyone call the API. `role` is `user` (their own
-- jobs and schedules) or `admin` (everything, plus workers, tokens and reconcile). A revoked or
-- expired token stops working within the gateway's cache time (2 s).

CREATE TABLE tokens (
    id          text PRIMARY KEY,
    user_name   text NOT NULL CHECK (user_name ~ '^[A-Za-z0-9._-]{1,64}$'),
    role        text NOT NULL CHECK (role IN ('user', 'admin')),
    digest      bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text,
    expires_at  timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX tokens_user ON tokens (user_name);
