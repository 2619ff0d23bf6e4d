-- What the services' runtime role may do with the schema `scns migrate` made: read and write
-- rows, draw ids from the sequences; never create, alter, drop or truncate anything.
-- `scns migrate --grant-to ROLE` runs this after the migrations, every time (it is
-- idempotent), so a table a later migration adds is covered too. {role} and {schema} are
-- replaced by the quoted role and schema names (shared/db/migrate.py grant_runtime).
-- The one-time setup (the two roles, the database, its owner) is deploy/sql/roles.sql.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
-- The record of applied migrations is the owner's alone: the services only read it.
REVOKE INSERT, UPDATE, DELETE ON {schema}.scns_schema_version FROM {role};
