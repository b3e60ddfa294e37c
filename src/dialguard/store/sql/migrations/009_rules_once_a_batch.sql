-- A batch's rules travel once per profile, not once per decision.
--
-- Up to 008 every item of a batch carried its profile's thirteen limits and two windows, four of
-- them arrays: the client encoded them, and the server decoded them, once per decision, though
-- a batch's items mostly share one or two profiles. Now an item (dg_decide_attempt) carries
-- only what is its own, and names its rules by position in a second array (dg_decide_rules),
-- which holds each profile once. The client builds a profile's rules once, when it loads the
-- profile.
--
-- The lock statement also reads every item once instead of three times, and hands back the items
-- whose caller ID is new to their campaign, which the read used to look up a second time.
--
-- The rules and their order are unchanged.

-- A profile's limits, as a decision needs them; NULL (or an empty array) where a rule is off.
-- dest_window_s is the longest window the destination rules look back over (0: none) and
-- cid_window_s the longest the caller ID's caps and concurrency look back over (NULL: both off).
CREATE TYPE dg_decide_rules AS (
    require_registered      boolean,
    cooldown_s              integer,
    conversation_min_s      integer,
    interval_s              integer,
    dest_cap_limits         integer[],
    dest_cap_windows        integer[],
    rotation_limit          integer,
    rotation_window_s       integer,
    campaign_rotation_limit integer,
    cid_cap_limits          integer[],
    cid_cap_windows         integer[],
    cid_max_concurrent      integer,
    max_call_s              integer,
    dest_window_s           integer,
    cid_window_s            integer
);

-- One call attempt: its own values, and its rules' position (from 1) in the batch's rules.
CREATE TYPE dg_decide_attempt AS (
    at               timestamptz,
    caller           text,
    dest             text,
    campaign         text,
    campaign_version integer,
    source           text,
    channel_id       text,
    pre_rule         text,
    pre_facts        text,
    hours_facts      text,
    rules            integer
);

DROP FUNCTION dg_decide_batch(dg_decide_item[], boolean);
DROP TYPE dg_decide_item;

-- Decisions in arrival order, answered in the same order. With p_record, each is recorded
-- (allowed or not) and counts for the next; without, nothing is locked or written.
CREATE FUNCTION dg_decide_batch(
    p_items dg_decide_attempt[], p_rules dg_decide_rules[], p_record boolean DEFAULT true)
RETURNS TABLE (decision_id bigint, rule text, facts jsonb, stale boolean)
LANGUAGE plpgsql
-- Planned once per connection: a custom plan for the read below costs more than it executes.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v        dg_decide_attempt;
    lim      dg_decide_rules;
    r        record;
    v_rule   text;
    v_facts  jsonb;
    v_ats    timestamptz[];
    v_callers text[];
    v_answered integer[];
    v_counts integer[];
    v_up     integer;
    v_n      integer;
    v_t      timestamptz;
    v_w      interval;
    v_seen   text[];
    -- The items (by position) whose caller ID is new to their campaign, found under its lock.
    v_camp_new bigint[];
    v_k      integer;
    v_c      integer;
    i        integer;
    j        integer;
    -- Allowed so far in this batch: their destinations and caller IDs.
    b_dests   text[] := '{}';
    b_callers text[] := '{}';
    v_dest_again boolean;
    v_cid_again  boolean;
    -- Records not yet written.
    w_rows   dg_new_decision[] := '{}';
    w_row    dg_new_decision;
BEGIN
    -- The locks any item may need, in one statement: destinations, then caller IDs, then
    -- campaigns, each kind sorted, so that two batches never wait on each other in a cycle. A
    -- campaign is locked only for an item whose caller ID is new to it: only such an item can
    -- raise the count of the campaign's caller IDs. Those items are noted: a use only ever
    -- moves forward, so an item found to have a recent use keeps it.
    IF p_record THEN
        WITH keys AS MATERIALIZED (
            SELECT x.ordinality AS n, kk.kind, kk.k
              FROM unnest(p_items) WITH ORDINALITY x
              JOIN unnest(p_rules) WITH ORDINALITY lm ON lm.ordinality = x.rules
             CROSS JOIN LATERAL (VALUES
                   (1, hashtextextended('dest:' || x.dest, 0)),
                   (2, CASE WHEN cardinality(lm.cid_cap_limits) > 0
                              OR lm.cid_max_concurrent IS NOT NULL
                            THEN hashtextextended('cid:' || x.caller, 0) END),
                   (3, CASE WHEN lm.campaign_rotation_limit IS NOT NULL
                             AND NOT EXISTS (
                                 SELECT 1 FROM campaign_callerids cc
                                  WHERE cc.campaign = x.campaign AND cc.caller_id = x.caller
                                    AND cc.last_used_at > x.at - interval '24 hours')
                            THEN hashtextextended('camp:' || x.campaign, 0) END)
                   ) kk (kind, k)
             WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL AND kk.k IS NOT NULL
        )
        SELECT coalesce(array_agg(keys.n) FILTER (WHERE keys.kind = 3), '{}')
          INTO v_camp_new
          FROM keys
         -- Evaluated once, before the rows are read: every lock, in order.
         WHERE (SELECT count(pg_advisory_xact_lock(l.k))
                  FROM (SELECT DISTINCT keys.kind, keys.k FROM keys ORDER BY 1, 2) l) >= 0;
    END IF;

    -- Everything every item needs, read once after the locks. An item an earlier rule already
    -- refused reads no more than its campaign (whose version it still checks).
    FOR r IN
        SELECT x.ordinality AS n,
               c.version, c.paused, c.pause_reason, c.paused_at,
               k.number IS NOT NULL AS cid_found, k.state AS cid_state, k.reason AS cid_reason,
               k.campaign AS cid_campaign, k.changed_at AS cid_changed_at,
               -- Unchecked (and so read again below) when nothing is locked.
               NOT p_record OR x.ordinality = ANY (v_camp_new) AS camp_new,
               -- The destination's own entry first, else its longest listed prefix.
               CASE WHEN bn.source IS NOT NULL THEN 'number'
                    WHEN bp.prefix IS NOT NULL THEN 'prefix' END AS bl_match,
               CASE WHEN bn.source IS NOT NULL THEN x.dest ELSE bp.prefix END AS bl_value,
               CASE WHEN bn.source IS NOT NULL THEN bn.campaign ELSE bp.campaign END
                   AS bl_campaign,
               CASE WHEN bn.source IS NOT NULL THEN bn.source ELSE bp.source END AS bl_source,
               CASE WHEN bn.source IS NOT NULL THEN bn.expires_at ELSE bp.expires_at END
                   AS bl_expires_at,
               h.ats, h.callers, h.answered, cn.counts, cn.up
          FROM unnest(p_items) WITH ORDINALITY x
          JOIN unnest(p_rules) WITH ORDINALITY lm ON lm.ordinality = x.rules
          LEFT JOIN dg_prefix_lengths pl ON true
          LEFT JOIN campaigns c ON c.name = x.campaign
          LEFT JOIN callerids k ON k.number = x.caller AND x.pre_rule IS NULL
          -- The CASE keeps the cast from ever seeing a destination a rule refused.
          LEFT JOIN LATERAL (
                SELECT b.campaign, b.source, b.expires_at FROM blacklist_numbers b
                 WHERE b.number = CASE WHEN x.pre_rule IS NULL
                                       THEN substr(x.dest, 2)::bigint END
                   AND b.campaign IN ('', x.campaign)
                   AND (b.expires_at IS NULL OR b.expires_at > x.at)
                 ORDER BY b.campaign DESC LIMIT 1) bn ON true
          -- The longest listed prefix of the destination, probed at the lengths listed
          -- prefixes have (of prefixes of one number the longest sorts last). Without the
          -- lengths' row (never expected), every length is probed: slower, never wrong.
          LEFT JOIN LATERAL (
                SELECT b.prefix, b.campaign, b.source, b.expires_at FROM blacklist_prefixes b
                 WHERE b.prefix = ANY (ARRAY(
                           SELECT left(x.dest, n)
                             FROM unnest(coalesce(pl.lengths,
                                                  '{2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}')) n
                            WHERE n <= length(x.dest)))
                   AND b.campaign IN ('', x.campaign)
                   AND (b.expires_at IS NULL OR b.expires_at > x.at)
                 ORDER BY b.prefix DESC LIMIT 1) bp ON x.pre_rule IS NULL
          LEFT JOIN LATERAL dg_destination_history(x.dest, x.at, lm.dest_window_s) h
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
          LEFT JOIN LATERAL dg_callerid_counts(
                    x.caller, x.at, lm.cid_window_s, lm.cid_cap_windows, lm.max_call_s) cn
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
         ORDER BY x.ordinality
    LOOP
        v := p_items[r.n];
        lim := p_rules[v.rules];
        v_rule := v.pre_rule;
        v_facts := v.pre_facts::jsonb;

        IF coalesce(r.version, 0) <> v.campaign_version THEN
            decision_id := NULL;
            rule := NULL;
            facts := jsonb_build_object('version', coalesce(r.version, 0));
            stale := true;
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF v_rule IS NULL THEN
            IF NOT r.cid_found THEN
                IF lim.require_registered THEN
                    v_rule := 'callerid_unknown';
                    v_facts := jsonb_build_object('caller_id', v.caller, 'registered', false);
                END IF;
            ELSIF r.cid_campaign IS NOT NULL AND r.cid_campaign <> v.campaign THEN
                v_rule := 'callerid_unknown';
                v_facts := jsonb_build_object('caller_id', v.caller,
                                              'registered_for', r.cid_campaign);
            ELSIF r.cid_state <> 'active' THEN
                v_rule := 'callerid_rested';
                v_facts := jsonb_build_object('caller_id', v.caller, 'state', r.cid_state,
                                              'reason', r.cid_reason,
                                              'since', r.cid_changed_at);
            END IF;
        END IF;

        IF v_rule IS NULL AND r.paused THEN
            v_rule := 'campaign_paused';
            v_facts := jsonb_build_object('campaign', v.campaign, 'reason', r.pause_reason,
                                          'since', r.paused_at);
        END IF;

        IF v_rule IS NULL AND r.bl_match IS NOT NULL THEN
            v_rule := 'blacklisted';
            v_facts := jsonb_build_object('match', r.bl_match, 'value', r.bl_value,
                'scope', CASE WHEN r.bl_campaign = '' THEN 'global' ELSE 'campaign' END,
                'source', r.bl_source, 'expires_at', r.bl_expires_at);
        END IF;

        IF v_rule IS NULL AND v.hours_facts IS NOT NULL THEN
            v_rule := 'calling_hours';
            v_facts := v.hours_facts::jsonb;
        END IF;

        IF v_rule IS NULL THEN
            -- Whether an attempt allowed earlier in this batch falls in what this item reads
            -- of its destination and of its caller ID: then it reads them again, and the
            -- batch's records so far are written first, as before any read that must see them.
            v_dest_again := lim.dest_window_s > 0 AND v.dest = ANY (b_dests);
            v_cid_again := lim.cid_window_s IS NOT NULL AND v.caller = ANY (b_callers);
            IF cardinality(w_rows) > 0
               AND (v_dest_again OR v_cid_again
                    OR (lim.campaign_rotation_limit IS NOT NULL AND r.camp_new)) THEN
                PERFORM dg_record_decisions(w_rows);
                w_rows := '{}';
            END IF;
            IF v_dest_again THEN
                SELECT h.ats, h.callers, h.answered INTO v_ats, v_callers, v_answered
                  FROM dg_destination_history(v.dest, v.at, lim.dest_window_s) h;
            ELSE
                v_ats := r.ats;
                v_callers := r.callers;
                v_answered := r.answered;
            END IF;
            IF v_cid_again THEN
                SELECT n.counts, n.up INTO v_counts, v_up
                  FROM dg_callerid_counts(v.caller, v.at, lim.cid_window_s, lim.cid_cap_windows,
                                          lim.max_call_s) n;
            ELSE
                v_counts := r.counts;
                v_up := r.up;
            END IF;
            v_n := cardinality(v_ats);
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND lim.cooldown_s IS NOT NULL
           AND lim.conversation_min_s IS NOT NULL THEN
            v_t := NULL;
            FOR i IN 1 .. v_n LOOP
                IF v_answered[i] >= lim.conversation_min_s
                   AND v_ats[i] + make_interval(secs => v_answered[i])
                       > v.at - make_interval(secs => lim.cooldown_s)
                   AND (v_t IS NULL OR v_ats[i] + make_interval(secs => v_answered[i]) > v_t)
                THEN
                    v_t := v_ats[i] + make_interval(secs => v_answered[i]);
                    v_k := v_answered[i];
                END IF;
            END LOOP;
            IF v_t IS NOT NULL THEN
                v_rule := 'destination_cooldown';
                v_facts := jsonb_build_object('ended_at', v_t, 'answered_seconds', v_k,
                    'cooldown_s', lim.cooldown_s, 'min_seconds', lim.conversation_min_s,
                    'frees_at', v_t + make_interval(secs => lim.cooldown_s));
            END IF;
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND lim.interval_s IS NOT NULL
           AND v_ats[v_n] > v.at - make_interval(secs => lim.interval_s) THEN
            v_rule := 'destination_interval';
            v_facts := jsonb_build_object('last_at', v_ats[v_n], 'interval_s', lim.interval_s,
                'frees_at', v_ats[v_n] + make_interval(secs => lim.interval_s));
        END IF;

        IF v_rule IS NULL AND v_n > 0 THEN
            FOR j IN 1 .. coalesce(cardinality(lim.dest_cap_limits), 0) LOOP
                v_w := make_interval(secs => lim.dest_cap_windows[j]);
                -- Oldest first: the attempts inside the window are the last ones.
                v_k := v_n + 1;
                WHILE v_k > 1 AND v_ats[v_k - 1] > v.at - v_w LOOP
                    v_k := v_k - 1;
                END LOOP;
                v_c := v_n - v_k + 1;
                IF v_c >= lim.dest_cap_limits[j] THEN
                    v_rule := 'destination_cap';
                    v_facts := jsonb_build_object('count', v_c, 'limit', lim.dest_cap_limits[j],
                        'window_s', lim.dest_cap_windows[j],
                        'frees_at', v_ats[v_k + v_c - lim.dest_cap_limits[j]] + v_w);
                    EXIT;
                END IF;
            END LOOP;
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND lim.rotation_limit IS NOT NULL THEN
            v_w := make_interval(secs => lim.rotation_window_s);
            v_seen := '{}';
            FOR i IN 1 .. v_n LOOP
                IF v_ats[i] > v.at - v_w AND NOT v_callers[i] = ANY (v_seen) THEN
                    v_seen := v_seen || v_callers[i];
                END IF;
            END LOOP;
            IF NOT v.caller = ANY (v_seen) AND cardinality(v_seen) >= lim.rotation_limit THEN
                v_rule := 'callerid_rotation';
                v_facts := jsonb_build_object('seen', cardinality(v_seen),
                                              'limit', lim.rotation_limit,
                                              'window_s', lim.rotation_window_s);
            END IF;
        END IF;

        -- Only a caller ID new to the campaign can raise its count. Its use is read again (an
        -- earlier item of the batch may have made it) with the count, under the campaign's lock.
        IF v_rule IS NULL AND lim.campaign_rotation_limit IS NOT NULL AND r.camp_new THEN
            SELECT (SELECT cc.last_used_at FROM campaign_callerids cc
                     WHERE cc.campaign = v.campaign AND cc.caller_id = v.caller),
                   (SELECT count(*) FROM campaign_callerids cc
                     WHERE cc.campaign = v.campaign AND cc.caller_id <> v.caller
                       AND cc.last_used_at > v.at - interval '24 hours')
              INTO v_t, v_n;
            IF (v_t IS NULL OR v_t <= v.at - interval '24 hours')
               AND v_n >= lim.campaign_rotation_limit THEN
                v_rule := 'campaign_rotation';
                v_facts := jsonb_build_object('used', v_n, 'limit', lim.campaign_rotation_limit,
                                              'window_s', 86400);
            END IF;
        END IF;

        IF v_rule IS NULL THEN
            FOR i IN 1 .. coalesce(cardinality(lim.cid_cap_limits), 0) LOOP
                v_w := make_interval(secs => lim.cid_cap_windows[i]);
                IF i <= 4 THEN
                    v_n := v_counts[i];
                ELSE
                    SELECT count(*) INTO v_n FROM decisions d
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v.at - v_w
                       AND d.at <= v.at;
                END IF;
                IF v_n >= lim.cid_cap_limits[i] THEN
                    SELECT d.at INTO v_t FROM decisions d
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v.at - v_w
                       AND d.at <= v.at
                     ORDER BY d.at OFFSET v_n - lim.cid_cap_limits[i] LIMIT 1;
                    v_rule := 'callerid_rate';
                    v_facts := jsonb_build_object('count', v_n, 'limit', lim.cid_cap_limits[i],
                        'window_s', lim.cid_cap_windows[i], 'frees_at', v_t + v_w);
                    EXIT;
                END IF;
            END LOOP;
        END IF;

        IF v_rule IS NULL AND lim.cid_max_concurrent IS NOT NULL
           AND v_up >= lim.cid_max_concurrent THEN
            v_rule := 'callerid_concurrency';
            v_facts := jsonb_build_object('up', v_up, 'limit', lim.cid_max_concurrent);
        END IF;

        decision_id := NULL;
        IF p_record THEN
            decision_id := nextval('decisions_id_seq');
            w_row := (decision_id, v.at, v.caller, v.dest, v.campaign, v_rule IS NULL, v_rule,
                      coalesce(v_facts, '{}'), v.source, v.channel_id);
            w_rows := w_rows || w_row;
            IF v_rule IS NULL THEN
                b_dests := b_dests || v.dest;
                b_callers := b_callers || v.caller;
            END IF;
        END IF;
        rule := v_rule;
        facts := coalesce(v_facts, '{}'::jsonb);
        stale := false;
        RETURN NEXT;
    END LOOP;

    IF cardinality(w_rows) > 0 THEN
        PERFORM dg_record_decisions(w_rows);
    END IF;
END;
$$;
