-- Fewer index entries and fewer statements per decision.
--
-- * decisions_callerid_up goes: the calls still up are counted in the same scan as the caller
--   ID's caps. Without it no index covers outcome_at, so recording an outcome becomes a HOT
--   update (no new index entries), given room on the page: hence the fill factor.
-- * decisions_at becomes a BRIN index: the retention prune and time-range reports still find
--   old rows by time, and a decision's insert no longer adds a B-tree entry for it.
-- * campaign_callerids_recent goes: a campaign's distinct caller IDs are counted through the
--   primary key (campaign first), only when a caller ID is new to the campaign. Refreshing
--   last_used_at, on every allowed decision, becomes a HOT update.
-- * The lengths of the listed prefixes are kept in dg_prefix_lengths, so a decision probes the
--   prefix list at those lengths only (a few), not at every length from 2 to 16.
-- * dg_decide reads the campaign's last use of the caller ID, the destination's own blacklist
--   entry and the prefix lengths with the campaign and caller ID, in one statement; probes the
--   prefixes in a statement of their own, only when there are any; and counts the caller ID's
--   caps and its calls up in one index scan.
DROP INDEX decisions_callerid_up;
DROP INDEX decisions_at;
CREATE INDEX decisions_at ON decisions USING brin (at);
ALTER TABLE decisions SET (fillfactor = 80);
DROP INDEX campaign_callerids_recent;
ALTER TABLE campaign_callerids SET (fillfactor = 50);

-- One row: every length (in characters, '+' included) of a listed prefix, ascending, any
-- campaign. More lengths than needed only cost a probe each; fewer would miss a prefix, so every
-- statement that changes the prefix list refreshes it, in the same transaction. Writers take the
-- row's lock first and compute in the next statement, whose snapshot then holds every writer
-- before them. The lock is held to the end of the writer's transaction: writers of the prefix
-- list go one at a time (decisions only read the row and never wait).
CREATE TABLE dg_prefix_lengths (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    lengths  integer[] NOT NULL
);
INSERT INTO dg_prefix_lengths (lengths)
SELECT ARRAY(SELECT DISTINCT length(prefix) FROM blacklist_prefixes ORDER BY 1);

-- New prefixes add their lengths (cheap, for imports row by row).
CREATE FUNCTION dg_prefix_lengths_grow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM dg_prefix_lengths FOR UPDATE;
    UPDATE dg_prefix_lengths
       SET lengths = ARRAY(SELECT DISTINCT n
                             FROM unnest(lengths || ARRAY(SELECT length(prefix) FROM changed)) n
                            ORDER BY 1);
    RETURN NULL;
END;
$$;

-- Removals recompute the list from the table.
CREATE FUNCTION dg_prefix_lengths_recount() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM dg_prefix_lengths FOR UPDATE;
    UPDATE dg_prefix_lengths
       SET lengths = ARRAY(SELECT DISTINCT length(prefix) FROM blacklist_prefixes ORDER BY 1);
    RETURN NULL;
END;
$$;

CREATE TRIGGER blacklist_prefixes_inserted AFTER INSERT ON blacklist_prefixes
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION dg_prefix_lengths_grow();
CREATE TRIGGER blacklist_prefixes_updated AFTER UPDATE ON blacklist_prefixes
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION dg_prefix_lengths_grow();
CREATE TRIGGER blacklist_prefixes_deleted AFTER DELETE ON blacklist_prefixes
    FOR EACH STATEMENT EXECUTE FUNCTION dg_prefix_lengths_recount();
CREATE TRIGGER blacklist_prefixes_truncated AFTER TRUNCATE ON blacklist_prefixes
    FOR EACH STATEMENT EXECUTE FUNCTION dg_prefix_lengths_recount();

-- dg_decide now returns one row, not a set: dg_decide_batch then calls it as a plain
-- expression, without a query (and its executor start-up) around every item.
DROP FUNCTION dg_decide(
    timestamptz, text, text, text, integer, boolean, text, text, text, jsonb, jsonb, boolean,
    integer, integer, integer, integer[], integer[], integer, integer, integer, integer[],
    integer[], integer, integer);

CREATE FUNCTION dg_decide(
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
    p_max_call_s integer,
    OUT decision_id bigint,
    OUT rule text,
    OUT facts jsonb,
    OUT stale boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_rule   text := p_pre_rule;
    v_facts  jsonb := p_pre_facts;
    v_camp   record;
    v_row    record;
    v_n      integer;
    v_t      timestamptz;
    v_w      interval;
    v_dwin   integer;
    v_w_s    integer;
    v_ats    timestamptz[];
    v_callers text[];
    v_answered integer[];
    v_seen   text[];
    v_k      integer;
    v_c      integer;
    v_cwin   integer;
    v_counts integer[];
    v_up     integer;
    v_len    integer;
    v_prefixes text[];
    i        integer;
    j        integer;
BEGIN
    -- Everything read before any lock, in one statement (all of it only when no earlier rule
    -- has already decided): the campaign, the caller ID, when the campaign last used it, the
    -- destination's own blacklist entry and the lengths of the listed prefixes. The last use
    -- only ever moves forward, so a use seen here is still there after the locks.
    SELECT c.version, c.paused, c.pause_reason, c.paused_at,
           k.number IS NOT NULL AS cid_found, k.state AS cid_state, k.reason AS cid_reason,
           k.campaign AS cid_campaign, k.changed_at AS cid_changed_at,
           cc.last_used_at AS cid_last_used_at,
           -- Without its row (never expected), every length is probed: slower, never wrong.
           coalesce(pl.lengths, '{2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}') AS prefix_lengths,
           bn.campaign AS bn_campaign, bn.source AS bn_source, bn.expires_at AS bn_expires_at
      INTO v_camp
      FROM (SELECT) one
      LEFT JOIN dg_prefix_lengths pl ON true
      LEFT JOIN campaigns c ON c.name = p_campaign
      LEFT JOIN callerids k ON k.number = p_caller AND v_rule IS NULL
      LEFT JOIN campaign_callerids cc
             ON cc.campaign = p_campaign AND cc.caller_id = p_caller AND v_rule IS NULL
            AND p_campaign_rotation_limit IS NOT NULL
      -- The CASE keeps the cast from ever seeing a destination an earlier rule refused.
      LEFT JOIN LATERAL (
            SELECT b.campaign, b.source, b.expires_at FROM blacklist_numbers b
             WHERE b.number = CASE WHEN v_rule IS NULL THEN substr(p_dest, 2)::bigint END
               AND b.campaign IN ('', p_campaign)
               AND (b.expires_at IS NULL OR b.expires_at > p_at)
             ORDER BY b.campaign DESC LIMIT 1) bn ON true;
    IF coalesce(v_camp.version, 0) <> p_campaign_version THEN
        facts := jsonb_build_object('version', coalesce(v_camp.version, 0));
        stale := true;
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

    IF v_rule IS NULL AND v_camp.bn_source IS NOT NULL THEN
        v_rule := 'blacklisted';
        v_facts := jsonb_build_object('match', 'number', 'value', p_dest,
            'scope', CASE WHEN v_camp.bn_campaign = '' THEN 'global' ELSE 'campaign' END,
            'source', v_camp.bn_source, 'expires_at', v_camp.bn_expires_at);
    END IF;

    IF v_rule IS NULL AND cardinality(v_camp.prefix_lengths) > 0 THEN
        -- The longest listed prefix of the destination, probed at the lengths listed prefixes
        -- have (a prefix as long as the number included); of prefixes of one number the longest
        -- sorts last. The candidates are spelled out as fifteen elements, the most there can be
        -- (lengths 2 to 16), the missing ones NULL, which the index skips: with an array of
        -- unknown size, PostgreSQL would plan the statement again on every call.
        v_prefixes := '{}';
        FOREACH v_len IN ARRAY v_camp.prefix_lengths LOOP
            EXIT WHEN v_len > length(p_dest);
            v_prefixes := v_prefixes || left(p_dest, v_len);
        END LOOP;
        SELECT b.prefix, b.campaign, b.source, b.expires_at INTO v_row
          FROM blacklist_prefixes b
         WHERE b.prefix = ANY (ARRAY[
                   v_prefixes[1], v_prefixes[2], v_prefixes[3], v_prefixes[4],
                   v_prefixes[5], v_prefixes[6], v_prefixes[7], v_prefixes[8],
                   v_prefixes[9], v_prefixes[10], v_prefixes[11], v_prefixes[12],
                   v_prefixes[13], v_prefixes[14], v_prefixes[15]])
           AND b.campaign IN ('', p_campaign)
           AND (b.expires_at IS NULL OR b.expires_at > p_at)
         ORDER BY b.prefix DESC LIMIT 1;
        IF FOUND THEN
            v_rule := 'blacklisted';
            v_facts := jsonb_build_object('match', 'prefix', 'value', v_row.prefix,
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
        IF v_camp.cid_last_used_at IS NULL
           OR v_camp.cid_last_used_at <= p_at - interval '24 hours' THEN
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

    -- The caller ID's allowed attempts: every cap's count (the first four) and the calls still
    -- up, from one index scan over the longest window; a fifth cap and beyond count alone.
    IF v_rule IS NULL
       AND (cardinality(p_cid_cap_limits) > 0 OR p_cid_max_concurrent IS NOT NULL) THEN
        v_cwin := CASE WHEN p_cid_max_concurrent IS NOT NULL THEN p_max_call_s ELSE 0 END;
        FOREACH v_w_s IN ARRAY coalesce(p_cid_cap_windows, '{}') LOOP
            v_cwin := greatest(v_cwin, v_w_s);
        END LOOP;
        SELECT ARRAY[
                   count(*) FILTER (
                       WHERE d.at > p_at - make_interval(secs => p_cid_cap_windows[1])),
                   count(*) FILTER (
                       WHERE d.at > p_at - make_interval(secs => p_cid_cap_windows[2])),
                   count(*) FILTER (
                       WHERE d.at > p_at - make_interval(secs => p_cid_cap_windows[3])),
                   count(*) FILTER (
                       WHERE d.at > p_at - make_interval(secs => p_cid_cap_windows[4]))
               ]::integer[],
               count(*) FILTER (WHERE d.outcome_at IS NULL
                                  AND d.at > p_at - make_interval(secs => p_max_call_s))
          INTO v_counts, v_up
          FROM decisions d
         WHERE d.caller_id = p_caller AND d.allowed
           AND d.at > p_at - make_interval(secs => v_cwin) AND d.at <= p_at;
    END IF;

    IF v_rule IS NULL THEN
        FOR i IN 1 .. coalesce(cardinality(p_cid_cap_limits), 0) LOOP
            v_w := make_interval(secs => p_cid_cap_windows[i]);
            IF i <= 4 THEN
                v_n := v_counts[i];
            ELSE
                SELECT count(*) INTO v_n FROM decisions d
                 WHERE d.caller_id = p_caller AND d.allowed AND d.at > p_at - v_w
                   AND d.at <= p_at;
            END IF;
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

    IF v_rule IS NULL AND p_cid_max_concurrent IS NOT NULL AND v_up >= p_cid_max_concurrent THEN
        v_rule := 'callerid_concurrency';
        v_facts := jsonb_build_object('up', v_up, 'limit', p_cid_max_concurrent);
    END IF;

    -- The decision's record and, when allowed, the campaign's use of the caller ID: one
    -- statement that also answers.
    IF p_record THEN
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
        SELECT ins.id INTO decision_id FROM ins;
    END IF;
    rule := v_rule;
    facts := coalesce(v_facts, '{}'::jsonb);
    stale := false;
END;
$$;

CREATE OR REPLACE FUNCTION dg_decide_batch(p_items dg_decide_item[])
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
        r := dg_decide(
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

