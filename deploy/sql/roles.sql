-- SCNS Conductor: the one-time PostgreSQL setup for production, run by an administrator (the
-- managed service's master user, or `postgres`), e.g.
--   psql "postgresql://ADMIN@PG_HOST:5432/postgres" -f deploy/sql/roles.sql
-- then set the two passwords (\password scns_owner, \password scns_app) and store the URLs
-- in the Kubernetes Secret `scns-connection` (docs/operations.md, "First install"):
--   migrate-database-url  postgresql://scns_owner:...@PG_HOST:5432/scns   (the migration Job)
--   database-url          postgresql://scns_app:...@PG_HOST:5432/scns     (every service)
--
-- Two roles:
--   scns_owner  owns the database and its schema; `scns migrate` runs as it and, after the
--               migrations, grants scns_app the runtime privileges on every table and
--               sequence (shared/db/grants.sql), every time, so new tables are covered.
--   scns_app    what the services run as: reads and writes rows, draws ids from sequences;
--               may not create, alter, drop or truncate anything (SCNS_MIGRATE_ON_START=0).
-- Rename them here and in the Job's SCNS_APP_ROLE (deploy/k8s/components/migrations) alike.
-- Plain SQL but for one psql `\connect`; it runs once (CREATE ROLE and
-- CREATE DATABASE fail if they exist).

CREATE ROLE scns_owner LOGIN;
CREATE ROLE scns_app LOGIN;
-- On a managed service whose administrator is not a superuser (RDS, Cloud SQL, Azure), it must
-- be a member of a role to create objects owned by it.
GRANT scns_owner TO CURRENT_USER;
CREATE DATABASE scns OWNER scns_owner;
-- Nobody else connects; the runtime role may.
REVOKE ALL ON DATABASE scns FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE scns TO scns_app;
GRANT ALL ON DATABASE scns TO scns_owner;

-- Inside the new database: only the owner may create anything in its schema (PostgreSQL 14
-- and older let every role create in `public`; 15 and newer already do not).
\connect scns
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO scns_owner;
