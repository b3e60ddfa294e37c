-- The functions of the release before last, kept by 010 for a rolling upgrade from it, go.
--
-- 010 moved decisions to dg_decide (sql/functions/decisions.sql) and left the previous
-- release's dg_decide_batch, with the helpers only it calls, so instances still running that
-- release kept deciding while the others were upgraded. The release with 010 and 011 has run
-- since; an upgrade from the release before it goes through it. What is left after this is
-- what sql/functions/ defines, and the trigger functions of the tables (007).
DROP FUNCTION IF EXISTS dg_decide_batch(dg_decide_attempt[], dg_decide_rules[], boolean);
DROP FUNCTION IF EXISTS dg_destination_history(text, timestamptz, integer);
DROP FUNCTION IF EXISTS dg_callerid_counts(text, timestamptz, integer, integer[], integer);
DROP FUNCTION IF EXISTS dg_record_decisions(dg_new_decision[]);
DROP TYPE IF EXISTS dg_decide_attempt;
DROP TYPE IF EXISTS dg_new_decision;
