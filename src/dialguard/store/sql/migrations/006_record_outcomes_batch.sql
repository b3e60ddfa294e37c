-- Outcomes in batches, as decisions are (005): one round trip and one commit for every outcome
-- that arrived while the previous batch was in flight. Each is recorded and judged by
-- dg_record_outcome, one after another. The caller IDs' locks are taken first, sorted, so a
-- batch never waits in a cycle with another batch, a decision or a complaint. One row comes back
-- for each outcome, in order; recorded is false for one that was not recorded.
CREATE FUNCTION dg_record_outcomes(
    p_decision_ids bigint[],
    p_outcomes text[],
    p_answered_seconds integer[],
    p_causes integer[],
    p_sip_codes integer[],
    p_ats timestamptz[],
    p_block_window integer,
    p_block_share numeric
) RETURNS TABLE (recorded boolean, caller_id text, campaign text, rested boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r  record;
    i  integer;
BEGIN
    PERFORM pg_advisory_xact_lock(s.k)
       FROM (SELECT DISTINCT hashtextextended('cid:' || d.caller_id, 0) AS k
               FROM decisions d
              WHERE d.id = ANY (p_decision_ids) AND d.allowed AND d.outcome_at IS NULL
              ORDER BY 1) s;
    FOR i IN 1 .. coalesce(cardinality(p_decision_ids), 0) LOOP
        SELECT * INTO r FROM dg_record_outcome(
            p_decision_ids[i], p_outcomes[i], p_answered_seconds[i], p_causes[i],
            p_sip_codes[i], p_ats[i], p_block_window, p_block_share);
        IF FOUND THEN
            recorded := r.recorded;
            caller_id := r.caller_id;
            campaign := r.campaign;
            rested := r.rested;
        ELSE
            recorded := false;
            caller_id := NULL;
            campaign := NULL;
            rested := false;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
