-- Decisions in batches: one round trip and one commit for every decision that arrived while the
-- previous batch was in flight. Each item is decided by dg_decide, one after another, so an item
-- sees every item before it, exactly as if they had come in that order one transaction each.

-- One recorded decision's parameters, as dg_decide takes them (the facts as JSON text).
CREATE TYPE dg_decide_item AS (
    at                       timestamptz,
    caller                   text,
    dest                     text,
    campaign                 text,
    campaign_version         integer,
    source                   text,
    channel_id               text,
    pre_rule                 text,
    pre_facts                text,
    hours_facts              text,
    require_registered       boolean,
    cooldown_s               integer,
    conversation_min_s       integer,
    interval_s               integer,
    dest_cap_limits          integer[],
    dest_cap_windows         integer[],
    rotation_limit           integer,
    rotation_window_s        integer,
    campaign_rotation_limit  integer,
    cid_cap_limits           integer[],
    cid_cap_windows          integer[],
    cid_max_concurrent       integer,
    max_call_s               integer
);

-- The locks every item may need are taken first, each kind sorted, in the order dg_decide takes
-- them (destinations, then caller IDs, then campaigns): two batches, or a batch and a single
-- decision, can then never wait on each other in a cycle. A campaign is locked only for an item
-- whose caller ID is new to it, which is when dg_decide would lock it.
CREATE FUNCTION dg_decide_batch(p_items dg_decide_item[])
RETURNS TABLE (decision_id bigint, rule text, facts jsonb, stale boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v  dg_decide_item;
    r  record;
BEGIN
    PERFORM pg_advisory_xact_lock(s.k)
       FROM (SELECT DISTINCT hashtextextended('dest:' || x.dest, 0) AS k
               FROM unnest(p_items) x
              WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
              ORDER BY 1) s;
    PERFORM pg_advisory_xact_lock(s.k)
       FROM (SELECT DISTINCT hashtextextended('cid:' || x.caller, 0) AS k
               FROM unnest(p_items) x
              WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
                AND (cardinality(x.cid_cap_limits) > 0 OR x.cid_max_concurrent IS NOT NULL)
              ORDER BY 1) s;
    PERFORM pg_advisory_xact_lock(s.k)
       FROM (SELECT DISTINCT hashtextextended('camp:' || x.campaign, 0) AS k
               FROM unnest(p_items) x
              WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
                AND x.campaign_rotation_limit IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM campaign_callerids cc
                                 WHERE cc.campaign = x.campaign AND cc.caller_id = x.caller
                                   AND cc.last_used_at > x.at - interval '24 hours')
              ORDER BY 1) s;

    FOREACH v IN ARRAY p_items LOOP
        SELECT * INTO r FROM dg_decide(
            v.at, v.caller, v.dest, v.campaign, v.campaign_version, true, v.source,
            v.channel_id, v.pre_rule, v.pre_facts::jsonb, v.hours_facts::jsonb,
            v.require_registered, v.cooldown_s, v.conversation_min_s, v.interval_s,
            v.dest_cap_limits, v.dest_cap_windows, v.rotation_limit, v.rotation_window_s,
            v.campaign_rotation_limit, v.cid_cap_limits, v.cid_cap_windows,
            v.cid_max_concurrent, v.max_call_s);
        decision_id := r.decision_id;
        rule := r.rule;
        facts := r.facts;
        stale := r.stale;
        RETURN NEXT;
    END LOOP;
END;
$$;
