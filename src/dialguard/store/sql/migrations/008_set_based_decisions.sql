-- Decisions read and write per batch, not per item.
--
-- Up to 007 a batch of decisions ran dg_decide once per item: five or six statements each,
-- whose executor start-up and PL/pgSQL set-up cost the server more than the reads themselves.
-- Now dg_decide_batch takes its locks in one statement, reads what every item needs in one
-- more (campaign, caller ID, last use, blacklist, prefixes, the destination's attempts, the
-- caller ID's counts), judges the items in order and writes their records in one statement at
-- the end. dg_decide goes: one decision is a batch of one, so the rules are written once.
--
-- The read happens after the locks and sees every decision committed before them. What it
-- cannot see is the batch's own records: an item whose destination or caller ID already had
-- an allowed attempt earlier in the batch reads its own again, after the batch's records so far
-- are written, and so does an item that may count the campaign's caller IDs. Each item is thus
-- judged on exactly what the same calls one by one would have seen.

CREATE TYPE dg_new_decision AS (
    id           bigint,
    at           timestamptz,
    caller_id    text,
    destination  text,
    campaign     text,
    allowed      boolean,
    rule         text,
    facts        jsonb,
    source       text,
    channel_id   text
);

-- What a decision needs beyond its rules' limits: the longest window its destination rules
-- look back over (0: none) and the longest its caller ID's caps and concurrency look back over
-- (NULL: both off), in seconds. The caller works them out once, from the same limits.
ALTER TYPE dg_decide_item
    ADD ATTRIBUTE dest_window_s integer,
    ADD ATTRIBUTE cid_window_s integer;

-- The destination's allowed attempts in the window, oldest first.
CREATE FUNCTION dg_destination_history(p_dest text, p_at timestamptz, p_window_s integer)
RETURNS TABLE (ats timestamptz[], callers text[], answered integer[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(d.at ORDER BY d.at), '{}'),
           coalesce(array_agg(d.caller_id ORDER BY d.at), '{}'),
           coalesce(array_agg(coalesce(d.answered_seconds, -1) ORDER BY d.at), '{}')
      FROM decisions d
     WHERE d.destination = p_dest AND d.allowed
       AND d.at > p_at - make_interval(secs => p_window_s) AND d.at <= p_at
$$;

-- The caller ID's allowed attempts in the window (none without one): the counts in its first
-- four cap windows and its calls still up, in one index scan.
CREATE FUNCTION dg_callerid_counts(
    p_caller text, p_at timestamptz, p_window_s integer, p_cap_windows integer[],
    p_max_call_s integer)
RETURNS TABLE (counts integer[], up integer)
LANGUAGE sql STABLE AS $$
    SELECT ARRAY[
               count(*) FILTER (WHERE d.at > p_at - make_interval(secs => p_cap_windows[1])),
               count(*) FILTER (WHERE d.at > p_at - make_interval(secs => p_cap_windows[2])),
               count(*) FILTER (WHERE d.at > p_at - make_interval(secs => p_cap_windows[3])),
               count(*) FILTER (WHERE d.at > p_at - make_interval(secs => p_cap_windows[4]))
           ]::integer[],
           count(*) FILTER (WHERE d.outcome_at IS NULL
                              AND d.at > p_at - make_interval(secs => p_max_call_s))::integer
      FROM decisions d
     WHERE d.caller_id = p_caller AND d.allowed
       AND d.at > p_at - make_interval(secs => p_window_s) AND d.at <= p_at
$$;

-- The batch's records and, for the allowed ones, the campaigns' use of their caller IDs.
CREATE FUNCTION dg_record_decisions(p_rows dg_new_decision[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    WITH ins AS (
        INSERT INTO decisions (id, at, caller_id, destination, campaign, allowed, rule, facts,
                               source, channel_id)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.at, r.caller_id, r.destination, r.campaign, r.allowed, r.rule, r.facts,
               r.source, r.channel_id
          FROM unnest(p_rows) r
    )
    INSERT INTO campaign_callerids AS cc (campaign, caller_id, last_used_at)
    SELECT r.campaign, r.caller_id, max(r.at)
      FROM unnest(p_rows) r
     WHERE r.allowed
     GROUP BY r.campaign, r.caller_id
     ORDER BY r.campaign, r.caller_id
    ON CONFLICT (campaign, caller_id) DO UPDATE
       SET last_used_at = excluded.last_used_at
     WHERE cc.last_used_at < excluded.last_used_at;
END;
$$;

DROP FUNCTION dg_decide_batch(dg_decide_item[]);

-- Decisions in arrival order, answered in the same order. With p_record, each is recorded
-- (allowed or not) and counts for the next; without, nothing is locked or written.
CREATE FUNCTION dg_decide_batch(p_items dg_decide_item[], p_record boolean DEFAULT true)
RETURNS TABLE (decision_id bigint, rule text, facts jsonb, stale boolean)
LANGUAGE plpgsql
-- Planned once per connection: a custom plan for the read below costs more than it executes.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v        dg_decide_item;
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
    v_k      integer;
    v_c      integer;
    i        integer;
    j        integer;
    -- Allowed so far in this batch: their destinations and caller IDs.
    b_dests   text[] := '{}';
    b_callers text[] := '{}';
    -- Records not yet written.
    w_rows   dg_new_decision[] := '{}';
    w_row    dg_new_decision;
BEGIN
    -- The locks any item may need, in one statement: destinations, then caller IDs, then
    -- campaigns, each kind sorted, so that two batches never wait on each other in a cycle. A
    -- campaign is locked only for an item whose caller ID is new to it: only such an item can
    -- raise the count of the campaign's caller IDs.
    IF p_record THEN
        PERFORM pg_advisory_xact_lock(s.k)
           FROM (SELECT DISTINCT 1 AS kind, hashtextextended('dest:' || x.dest, 0) AS k
                   FROM unnest(p_items) x
                  WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
                 UNION
                 SELECT 2, hashtextextended('cid:' || x.caller, 0)
                   FROM unnest(p_items) x
                  WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
                    AND (cardinality(x.cid_cap_limits) > 0 OR x.cid_max_concurrent IS NOT NULL)
                 UNION
                 SELECT 3, hashtextextended('camp:' || x.campaign, 0)
                   FROM unnest(p_items) x
                  WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL
                    AND x.campaign_rotation_limit IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM campaign_callerids cc
                                     WHERE cc.campaign = x.campaign AND cc.caller_id = x.caller
                                       AND cc.last_used_at > x.at - interval '24 hours')
                  ORDER BY 1, 2) s;
    END IF;

    -- Everything every item needs, read once after the locks. An item an earlier rule already
    -- refused reads no more than its campaign (whose version it still checks).
    FOR r IN
        SELECT x.ordinality AS n,
               c.version, c.paused, c.pause_reason, c.paused_at,
               k.number IS NOT NULL AS cid_found, k.state AS cid_state, k.reason AS cid_reason,
               k.campaign AS cid_campaign, k.changed_at AS cid_changed_at,
               cc.last_used_at AS cid_last_used_at,
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
          LEFT JOIN dg_prefix_lengths pl ON true
          LEFT JOIN campaigns c ON c.name = x.campaign
          LEFT JOIN callerids k ON k.number = x.caller AND x.pre_rule IS NULL
          LEFT JOIN campaign_callerids cc
                 ON cc.campaign = x.campaign AND cc.caller_id = x.caller
                AND x.pre_rule IS NULL AND x.campaign_rotation_limit IS NOT NULL
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
          LEFT JOIN LATERAL dg_destination_history(x.dest, x.at, x.dest_window_s) h
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
          LEFT JOIN LATERAL dg_callerid_counts(
                    x.caller, x.at, x.cid_window_s, x.cid_cap_windows, x.max_call_s) cn
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
         ORDER BY x.ordinality
    LOOP
        v := p_items[r.n];
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
                IF v.require_registered THEN
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
            -- The batch's records so far are written before any read that must see them.
            IF cardinality(w_rows) > 0
               AND (v.dest = ANY (b_dests) OR v.caller = ANY (b_callers)
                    OR (v.campaign_rotation_limit IS NOT NULL
                        AND (r.cid_last_used_at IS NULL
                             OR r.cid_last_used_at <= v.at - interval '24 hours'))) THEN
                PERFORM dg_record_decisions(w_rows);
                w_rows := '{}';
            END IF;
            IF v.dest = ANY (b_dests) THEN
                SELECT h.ats, h.callers, h.answered INTO v_ats, v_callers, v_answered
                  FROM dg_destination_history(v.dest, v.at, v.dest_window_s) h;
            ELSE
                v_ats := r.ats;
                v_callers := r.callers;
                v_answered := r.answered;
            END IF;
            IF v.caller = ANY (b_callers) THEN
                SELECT n.counts, n.up INTO v_counts, v_up
                  FROM dg_callerid_counts(v.caller, v.at, v.cid_window_s, v.cid_cap_windows,
                                          v.max_call_s) n;
            ELSE
                v_counts := r.counts;
                v_up := r.up;
            END IF;
            v_n := cardinality(v_ats);
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND v.cooldown_s IS NOT NULL
           AND v.conversation_min_s IS NOT NULL THEN
            v_t := NULL;
            FOR i IN 1 .. v_n LOOP
                IF v_answered[i] >= v.conversation_min_s
                   AND v_ats[i] + make_interval(secs => v_answered[i])
                       > v.at - make_interval(secs => v.cooldown_s)
                   AND (v_t IS NULL OR v_ats[i] + make_interval(secs => v_answered[i]) > v_t)
                THEN
                    v_t := v_ats[i] + make_interval(secs => v_answered[i]);
                    v_k := v_answered[i];
                END IF;
            END LOOP;
            IF v_t IS NOT NULL THEN
                v_rule := 'destination_cooldown';
                v_facts := jsonb_build_object('ended_at', v_t, 'answered_seconds', v_k,
                    'cooldown_s', v.cooldown_s, 'min_seconds', v.conversation_min_s,
                    'frees_at', v_t + make_interval(secs => v.cooldown_s));
            END IF;
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND v.interval_s IS NOT NULL
           AND v_ats[v_n] > v.at - make_interval(secs => v.interval_s) THEN
            v_rule := 'destination_interval';
            v_facts := jsonb_build_object('last_at', v_ats[v_n], 'interval_s', v.interval_s,
                'frees_at', v_ats[v_n] + make_interval(secs => v.interval_s));
        END IF;

        IF v_rule IS NULL AND v_n > 0 THEN
            FOR j IN 1 .. coalesce(cardinality(v.dest_cap_limits), 0) LOOP
                v_w := make_interval(secs => v.dest_cap_windows[j]);
                -- Oldest first: the attempts inside the window are the last ones.
                v_k := v_n + 1;
                WHILE v_k > 1 AND v_ats[v_k - 1] > v.at - v_w LOOP
                    v_k := v_k - 1;
                END LOOP;
                v_c := v_n - v_k + 1;
                IF v_c >= v.dest_cap_limits[j] THEN
                    v_rule := 'destination_cap';
                    v_facts := jsonb_build_object('count', v_c, 'limit', v.dest_cap_limits[j],
                        'window_s', v.dest_cap_windows[j],
                        'frees_at', v_ats[v_k + v_c - v.dest_cap_limits[j]] + v_w);
                    EXIT;
                END IF;
            END LOOP;
        END IF;

        IF v_rule IS NULL AND v_n > 0 AND v.rotation_limit IS NOT NULL THEN
            v_w := make_interval(secs => v.rotation_window_s);
            v_seen := '{}';
            FOR i IN 1 .. v_n LOOP
                IF v_ats[i] > v.at - v_w AND NOT v_callers[i] = ANY (v_seen) THEN
                    v_seen := v_seen || v_callers[i];
                END IF;
            END LOOP;
            IF NOT v.caller = ANY (v_seen) AND cardinality(v_seen) >= v.rotation_limit THEN
                v_rule := 'callerid_rotation';
                v_facts := jsonb_build_object('seen', cardinality(v_seen),
                                              'limit', v.rotation_limit,
                                              'window_s', v.rotation_window_s);
            END IF;
        END IF;

        -- Only a caller ID new to the campaign can raise its count. Read before the locks, a
        -- use only ever moves forward; one that looks old is read again (an earlier item of the
        -- batch may have made it) with the count, under the campaign's lock.
        IF v_rule IS NULL AND v.campaign_rotation_limit IS NOT NULL
           AND (r.cid_last_used_at IS NULL
                OR r.cid_last_used_at <= v.at - interval '24 hours') THEN
            SELECT (SELECT cc.last_used_at FROM campaign_callerids cc
                     WHERE cc.campaign = v.campaign AND cc.caller_id = v.caller),
                   (SELECT count(*) FROM campaign_callerids cc
                     WHERE cc.campaign = v.campaign AND cc.caller_id <> v.caller
                       AND cc.last_used_at > v.at - interval '24 hours')
              INTO v_t, v_n;
            IF (v_t IS NULL OR v_t <= v.at - interval '24 hours')
               AND v_n >= v.campaign_rotation_limit THEN
                v_rule := 'campaign_rotation';
                v_facts := jsonb_build_object('used', v_n, 'limit', v.campaign_rotation_limit,
                                              'window_s', 86400);
            END IF;
        END IF;

        IF v_rule IS NULL THEN
            FOR i IN 1 .. coalesce(cardinality(v.cid_cap_limits), 0) LOOP
                v_w := make_interval(secs => v.cid_cap_windows[i]);
                IF i <= 4 THEN
                    v_n := v_counts[i];
                ELSE
                    SELECT count(*) INTO v_n FROM decisions d
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v.at - v_w
                       AND d.at <= v.at;
                END IF;
                IF v_n >= v.cid_cap_limits[i] THEN
                    SELECT d.at INTO v_t FROM decisions d
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v.at - v_w
                       AND d.at <= v.at
                     ORDER BY d.at OFFSET v_n - v.cid_cap_limits[i] LIMIT 1;
                    v_rule := 'callerid_rate';
                    v_facts := jsonb_build_object('count', v_n, 'limit', v.cid_cap_limits[i],
                        'window_s', v.cid_cap_windows[i], 'frees_at', v_t + v_w);
                    EXIT;
                END IF;
            END LOOP;
        END IF;

        IF v_rule IS NULL AND v.cid_max_concurrent IS NOT NULL
           AND v_up >= v.cid_max_concurrent THEN
            v_rule := 'callerid_concurrency';
            v_facts := jsonb_build_object('up', v_up, 'limit', v.cid_max_concurrent);
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

-- One decision is a batch of one: the rules live in dg_decide_batch alone.
DROP FUNCTION dg_decide(
    timestamptz, text, text, text, integer, boolean, text, text, text, jsonb, jsonb, boolean,
    integer, integer, integer, integer[], integer[], integer, integer, integer, integer[],
    integer[], integer, integer);
