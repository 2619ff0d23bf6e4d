-- Fencing (shared/fencing.py): the times the cluster compares come from PostgreSQL's clock.
-- A departure is recorded with left_at = now() when the registry writes it; left_mark names the
-- departure it recorded (the registry's record of it in Redis), so that a later departure of
-- the same incarnation gets a new left_at while rewriting the same one (the periodic sync)
-- changes nothing.
ALTER TABLE workers ADD COLUMN left_mark bigint;
