-- dg_decide: every check against shared state and the recording of the decision, in one
-- transaction and one round trip. Pure checks (number validity, calling hours) arrive as
-- parameters so the rule order stays the documented one. Per-key advisory locks (destination,
-- then caller ID, then campaign; always in that order, so no cycle) serialise only decisions that
-- share a key, and the statements after a lock see everything committed before it.
CREATE OR REPLACE FUNCTION dg_decide(
    p_at timestamptz,
    p_caller text,
    p_dest text,
    p_campaign text,
    p_campaign_version integer,
    p_record boolean,
    p_source text,
    p_channel_id text,
    p_pre_rule text,
    p_pre_facts jsonb,
    p_hours_facts jsonb,
    p_require_registered boolean,
    p_cooldown_s integer,
    p_conversation_min_s integer,
    p_interval_s integer,
    p_dest_cap_limits integer[],
    p_dest_cap_windows integer[],
    p_rotation_limit integer,
    p_rotation_window_s integer,
    p_campaign_rotation_limit integer,
    p_cid_cap_limits integer[],
    p_cid_cap_windows integer[],
    p_cid_max_concurrent integer,
    p_max_call_s integer
) RETURNS TABLE (decision_id bigint, rule text, facts jsonb, stale boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_rule   text := p_pre_rule;
    v_facts  jsonb := p_pre_facts;
    v_camp   record;
    v_row    record;
    v_n      integer;
    v_t      timestamptz;
    v_w      interval;
    v_id     bigint;
    v_dwin   integer;
    v_w_s    integer;
    v_ats    timestamptz[];
    v_callers text[];
    v_answered integer[];
    v_seen   text[];
    v_k      integer;
    v_c      integer;
    i        integer;
    j        integer;
BEGIN
    -- The campaign and the caller ID in one statement (the caller ID only when no earlier rule
    -- has already decided).
    SELECT c.version, c.paused, c.pause_reason, c.paused_at,
           k.number IS NOT NULL AS cid_found, k.state AS cid_state, k.reason AS cid_reason,
           k.campaign AS cid_campaign, k.changed_at AS cid_changed_at
      INTO v_camp
      FROM (SELECT) one
      LEFT JOIN campaigns c ON c.name = p_campaign
      LEFT JOIN callerids k ON k.number = p_caller AND v_rule IS NULL;
    IF coalesce(v_camp.version, 0) <> p_campaign_version THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text,
            jsonb_build_object('version', coalesce(v_camp.version, 0)), true;
        RETURN;
    END IF;

    IF v_rule IS NULL THEN
        IF NOT v_camp.cid_found THEN
            IF p_require_registered THEN
                v_rule := 'callerid_unknown';
                v_facts := jsonb_build_object('caller_id', p_caller, 'registered', false);
            END IF;
        ELSIF v_camp.cid_campaign IS NOT NULL AND v_camp.cid_campaign <> p_campaign THEN
            v_rule := 'callerid_unknown';
            v_facts := jsonb_build_object('caller_id', p_caller,
                                          'registered_for', v_camp.cid_campaign);
        ELSIF v_camp.cid_state <> 'active' THEN
            v_rule := 'callerid_rested';
            v_facts := jsonb_build_object('caller_id', p_caller, 'state', v_camp.cid_state,
                                          'reason', v_camp.cid_reason,
                                          'since', v_camp.cid_changed_at);
        END IF;
    END IF;

    IF v_rule IS NULL AND v_camp.paused THEN
        v_rule := 'campaign_paused';
        v_facts := jsonb_build_object('campaign', p_campaign, 'reason', v_camp.pause_reason,
                                      'since', v_camp.paused_at);
    END IF;

    IF v_rule IS NULL THEN
        -- The exact number first, else the longest listed prefix, in one statement: the
        -- second branch runs only when the first finds nothing. The candidate prefixes are
        -- written out to the longest a prefix may be (16 characters, see its CHECK), so the plan
        -- is generic and cached; left() of a shorter number repeats the whole number.
        SELECT x.kind, x.value, x.campaign, x.source, x.expires_at INTO v_row
          FROM ((SELECT 'number' AS kind, p_dest AS value, b.campaign, b.source, b.expires_at
                   FROM blacklist_numbers b
                  WHERE b.number = substr(p_dest, 2)::bigint AND b.campaign IN ('', p_campaign)
                    AND (b.expires_at IS NULL OR b.expires_at > p_at)
                  ORDER BY b.campaign DESC LIMIT 1)
                UNION ALL
                (SELECT 'prefix', b.prefix, b.campaign, b.source, b.expires_at
                   FROM blacklist_prefixes b
                  WHERE b.prefix = ANY (ARRAY[
                            left(p_dest, 2), left(p_dest, 3), left(p_dest, 4), left(p_dest, 5),
                            left(p_dest, 6), left(p_dest, 7), left(p_dest, 8), left(p_dest, 9),
                            left(p_dest, 10), left(p_dest, 11), left(p_dest, 12),
                            left(p_dest, 13), left(p_dest, 14), left(p_dest, 15),
                            left(p_dest, 16)])
                    AND b.campaign IN ('', p_campaign)
                    AND (b.expires_at IS NULL OR b.expires_at > p_at)
                  ORDER BY length(b.prefix) DESC LIMIT 1)) x
         LIMIT 1;
        IF FOUND THEN
            v_rule := 'blacklisted';
            v_facts := jsonb_build_object('match', v_row.kind, 'value', v_row.value,
                'scope', CASE WHEN v_row.campaign = '' THEN 'global' ELSE 'campaign' END,
                'source', v_row.source, 'expires_at', v_row.expires_at);
        END IF;
    END IF;

    IF v_rule IS NULL AND p_hours_facts IS NOT NULL THEN
        v_rule := 'calling_hours';
        v_facts := p_hours_facts;
    END IF;

    IF v_rule IS NULL AND p_record THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('dest:' || p_dest, 0));
        IF cardinality(p_cid_cap_limits) > 0 OR p_cid_max_concurrent IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(hashtextextended('cid:' || p_caller, 0));
        END IF;
    END IF;

    -- The destination's allowed attempts, oldest first, over the longest window any of its
    -- rules looks at, in one index scan; the rules below read these arrays in order. A
    -- destination has a handful of attempts (its caps see to that), so the loops are short.
    IF v_rule IS NULL THEN
        v_dwin := greatest(
            coalesce(p_interval_s, 0),
            coalesce(p_rotation_window_s, 0),
            CASE WHEN p_cooldown_s IS NOT NULL AND p_conversation_min_s IS NOT NULL
                 THEN p_cooldown_s + greatest(p_max_call_s, 86400) ELSE 0 END);
        -- A loop, not a subquery: a simple expression per element, nothing to plan.
        FOREACH v_w_s IN ARRAY coalesce(p_dest_cap_windows, '{}') LOOP
            v_dwin := greatest(v_dwin, v_w_s);
        END LOOP;
        IF v_dwin > 0 THEN
            SELECT coalesce(array_agg(d.at ORDER BY d.at), '{}'),
                   coalesce(array_agg(d.caller_id ORDER BY d.at), '{}'),
                   coalesce(array_agg(coalesce(d.answered_seconds, -1) ORDER BY d.at), '{}')
              INTO v_ats, v_callers, v_answered
              FROM decisions d
             WHERE d.destination = p_dest AND d.allowed
               AND d.at > p_at - make_interval(secs => v_dwin) AND d.at <= p_at;
            v_n := cardinality(v_ats);
        ELSE
            v_n := 0;
        END IF;
    END IF;

    IF v_rule IS NULL AND v_n > 0 AND p_cooldown_s IS NOT NULL
       AND p_conversation_min_s IS NOT NULL THEN
        v_t := NULL;
        FOR i IN 1 .. v_n LOOP
            IF v_answered[i] >= p_conversation_min_s
               AND v_ats[i] + make_interval(secs => v_answered[i])
                   > p_at - make_interval(secs => p_cooldown_s)
               AND (v_t IS NULL OR v_ats[i] + make_interval(secs => v_answered[i]) > v_t) THEN
                v_t := v_ats[i] + make_interval(secs => v_answered[i]);
                v_k := v_answered[i];
            END IF;
        END LOOP;
        IF v_t IS NOT NULL THEN
            v_rule := 'destination_cooldown';
            v_facts := jsonb_build_object('ended_at', v_t, 'answered_seconds', v_k,
                'cooldown_s', p_cooldown_s, 'min_seconds', p_conversation_min_s,
                'frees_at', v_t + make_interval(secs => p_cooldown_s));
        END IF;
    END IF;

    IF v_rule IS NULL AND v_n > 0 AND p_interval_s IS NOT NULL
       AND v_ats[v_n] > p_at - make_interval(secs => p_interval_s) THEN
        v_rule := 'destination_interval';
        v_facts := jsonb_build_object('last_at', v_ats[v_n], 'interval_s', p_interval_s,
            'frees_at', v_ats[v_n] + make_interval(secs => p_interval_s));
    END IF;

    IF v_rule IS NULL AND v_n > 0 THEN
        FOR j IN 1 .. coalesce(cardinality(p_dest_cap_limits), 0) LOOP
            v_w := make_interval(secs => p_dest_cap_windows[j]);
            -- Oldest first: the attempts inside the window are the last ones.
            v_k := v_n + 1;
            WHILE v_k > 1 AND v_ats[v_k - 1] > p_at - v_w LOOP
                v_k := v_k - 1;
            END LOOP;
            v_c := v_n - v_k + 1;
            IF v_c >= p_dest_cap_limits[j] THEN
                v_rule := 'destination_cap';
                v_facts := jsonb_build_object('count', v_c, 'limit', p_dest_cap_limits[j],
                    'window_s', p_dest_cap_windows[j],
                    'frees_at', v_ats[v_k + v_c - p_dest_cap_limits[j]] + v_w);
                EXIT;
            END IF;
        END LOOP;
    END IF;

    IF v_rule IS NULL AND v_n > 0 AND p_rotation_limit IS NOT NULL THEN
        v_w := make_interval(secs => p_rotation_window_s);
        v_seen := '{}';
        FOR i IN 1 .. v_n LOOP
            IF v_ats[i] > p_at - v_w AND NOT v_callers[i] = ANY (v_seen) THEN
                v_seen := v_seen || v_callers[i];
            END IF;
        END LOOP;
        IF NOT p_caller = ANY (v_seen) AND cardinality(v_seen) >= p_rotation_limit THEN
            v_rule := 'callerid_rotation';
            v_facts := jsonb_build_object('seen', cardinality(v_seen), 'limit', p_rotation_limit,
                                          'window_s', p_rotation_window_s);
        END IF;
    END IF;

    IF v_rule IS NULL AND p_campaign_rotation_limit IS NOT NULL THEN
        PERFORM 1 FROM campaign_callerids cc
         WHERE cc.campaign = p_campaign AND cc.caller_id = p_caller
           AND cc.last_used_at > p_at - interval '24 hours';
        IF NOT FOUND THEN
            -- Only a caller ID new to the campaign can raise its count: lock the campaign then.
            IF p_record THEN
                PERFORM pg_advisory_xact_lock(hashtextextended('camp:' || p_campaign, 0));
            END IF;
            SELECT count(*) INTO v_n FROM campaign_callerids cc
             WHERE cc.campaign = p_campaign AND cc.caller_id <> p_caller
               AND cc.last_used_at > p_at - interval '24 hours';
            IF v_n >= p_campaign_rotation_limit THEN
                v_rule := 'campaign_rotation';
                v_facts := jsonb_build_object('used', v_n, 'limit', p_campaign_rotation_limit,
                                              'window_s', 86400);
            END IF;
        END IF;
    END IF;

    IF v_rule IS NULL THEN
        FOR i IN 1 .. coalesce(cardinality(p_cid_cap_limits), 0) LOOP
            v_w := make_interval(secs => p_cid_cap_windows[i]);
            SELECT count(*) INTO v_n FROM decisions d
             WHERE d.caller_id = p_caller AND d.allowed AND d.at > p_at - v_w AND d.at <= p_at;
            IF v_n >= p_cid_cap_limits[i] THEN
                SELECT d.at INTO v_t FROM decisions d
                 WHERE d.caller_id = p_caller AND d.allowed AND d.at > p_at - v_w AND d.at <= p_at
                 ORDER BY d.at OFFSET v_n - p_cid_cap_limits[i] LIMIT 1;
                v_rule := 'callerid_rate';
                v_facts := jsonb_build_object('count', v_n, 'limit', p_cid_cap_limits[i],
                    'window_s', p_cid_cap_windows[i], 'frees_at', v_t + v_w);
                EXIT;
            END IF;
        END LOOP;
    END IF;

    IF v_rule IS NULL AND p_cid_max_concurrent IS NOT NULL THEN
        SELECT count(*) INTO v_n FROM decisions d
         WHERE d.caller_id = p_caller AND d.allowed AND d.outcome_at IS NULL
           AND d.at > p_at - make_interval(secs => p_max_call_s) AND d.at <= p_at;
        IF v_n >= p_cid_max_concurrent THEN
            v_rule := 'callerid_concurrency';
            v_facts := jsonb_build_object('up', v_n, 'limit', p_cid_max_concurrent);
        END IF;
    END IF;

    -- The decision's record and, when allowed, the campaign's use of the caller ID: one
    -- statement that also answers.
    IF p_record THEN
        RETURN QUERY
        WITH ins AS (
            INSERT INTO decisions (at, caller_id, destination, campaign, allowed, rule, facts,
                                   source, channel_id)
            VALUES (p_at, p_caller, p_dest, p_campaign, v_rule IS NULL, v_rule,
                    coalesce(v_facts, '{}'), p_source, p_channel_id)
            RETURNING id
        ), used AS (
            INSERT INTO campaign_callerids AS cc (campaign, caller_id, last_used_at)
            SELECT p_campaign, p_caller, p_at WHERE v_rule IS NULL
            ON CONFLICT (campaign, caller_id) DO UPDATE
               SET last_used_at = excluded.last_used_at
             WHERE cc.last_used_at < excluded.last_used_at
        )
        SELECT ins.id, v_rule, coalesce(v_facts, '{}'::jsonb), false FROM ins;
        RETURN;
    END IF;

    RETURN QUERY SELECT v_id, v_rule, coalesce(v_facts, '{}'::jsonb), false;
END;
$$;

-- Record what became of an allowed call; the first outcome recorded wins.
CREATE OR REPLACE FUNCTION dg_record_outcome(
    p_decision_id bigint,
    p_outcome text,
    p_answered_seconds integer,
    p_cause integer,
    p_sip_code integer,
    p_at timestamptz
) RETURNS TABLE (recorded boolean, caller_id text, campaign text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE decisions d
       SET outcome = p_outcome, outcome_at = p_at, answered_seconds = p_answered_seconds,
           cause = p_cause, sip_code = p_sip_code
     WHERE d.id = p_decision_id AND d.allowed AND d.outcome_at IS NULL
    RETURNING true, d.caller_id, d.campaign;
END;
$$;
