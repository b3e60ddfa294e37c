-- Decisions allowed in fail-open mode while the database was away are written back from the
-- local spool; the spool id makes a replay that is interrupted and repeated count each call once.
ALTER TABLE decisions ADD COLUMN spool_id uuid;
CREATE UNIQUE INDEX decisions_spool_id ON decisions (spool_id) WHERE spool_id IS NOT NULL;
