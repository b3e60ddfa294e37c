-- The decision functions as they run now. The migrator re-applies this file whenever it
-- changes (after the numbered migrations, which hold schema changes only); every statement
-- here is CREATE OR REPLACE. Functions the previous release calls keep their signatures.
--
-- THE LOCK ORDER. Everything that judges or changes a destination's, a caller ID's or a
-- campaign's counts (decisions, outcomes, complaints) serialises on transaction-level advisory
-- locks, and takes all it needs at once, through dg_lock, in one order: destinations, then
-- caller IDs, then campaigns; within a kind by the key's hash. Two transactions therefore never
-- wait on each other in a cycle. Blacklist and admin writes (caller-ID states, campaigns) take
-- no advisory lock: decisions read those tables under MVCC and never wait on their row locks.

-- Keys are 'dest:<E.164>', 'cid:<E.164>' and 'camp:<name>'; NULLs are skipped.
CREATE OR REPLACE FUNCTION dg_lock(p_keys text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT count(pg_advisory_xact_lock(l.h))
      FROM (SELECT DISTINCT
                   CASE split_part(k, ':', 1) WHEN 'dest' THEN 1 WHEN 'cid' THEN 2 ELSE 3 END
                       AS kind,
                   hashtextextended(k, 0) AS h
              FROM unnest(p_keys) k
             WHERE k IS NOT NULL
             ORDER BY 1, 2) l
$$;

-- The destination's allowed attempts after p_at - p_window_s and up to p_until, oldest first.
-- A live decision reads up to 'infinity': every attempt committed before it, whatever its time.
CREATE OR REPLACE FUNCTION dg_destination_attempts(
    p_dest text, p_at timestamptz, p_window_s integer, p_until timestamptz)
RETURNS TABLE (ats timestamptz[], callers text[], answered integer[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(d.at ORDER BY d.at), '{}'),
           coalesce(array_agg(d.caller_id ORDER BY d.at), '{}'),
           coalesce(array_agg(coalesce(d.answered_seconds, -1) ORDER BY d.at), '{}')
      FROM decisions d
     WHERE d.destination = p_dest AND d.allowed
       AND d.at > p_at - make_interval(secs => p_window_s) AND d.at <= p_until
$$;

-- The caller ID's allowed attempts in the window, up to p_until: the counts in its first four
-- cap windows and its calls still up, in one index scan.
CREATE OR REPLACE FUNCTION dg_callerid_attempts(
    p_caller text, p_at timestamptz, p_window_s integer, p_cap_windows integer[],
    p_max_call_s integer, p_until timestamptz)
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
       AND d.at > p_at - make_interval(secs => p_window_s) AND d.at <= p_until
$$;

-- The batch's records and, for the allowed ones, the campaigns' use of their caller IDs.
CREATE OR REPLACE FUNCTION dg_write_decisions(p_rows dg_decision_row[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    WITH ins AS (
        INSERT INTO decisions (id, at, caller_id, destination, campaign, allowed, rule, facts,
                               source, channel_id, spool_id, origin)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.at, r.caller_id, r.destination, r.campaign, r.allowed, r.rule, r.facts,
               r.source, r.channel_id, r.spool_id, r.origin
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

-- Decisions in arrival order, answered in the same order (a single decision is a batch of one).
-- With p_record each is recorded (allowed or not) and counts for the next; without, nothing is
-- locked or written.
--
-- Time: a live item's time is the database clock once every lock is held (at in the answer),
-- and it reads every allowed attempt committed before, with no upper bound on their times. Of
-- two decisions that share a destination, a caller ID or a campaign, the one that takes the
-- shared lock later sees the other, whatever the instances' clocks say. An item that is not
-- live is judged as of its own at (an audit replay).
--
-- Abandoned: an item whose deadline passed while it waited for the locks (or for the server:
-- the deadline is on the database's clock, not counted from the statement's arrival) is
-- answered with abandoned = true and recorded nowhere: its caller has stopped waiting and
-- placed no call.
--
-- JIT stays off: on tables without statistics (a new database) the planner's row estimates
-- make this read look expensive enough to compile, which costs tens of milliseconds a call.
CREATE OR REPLACE FUNCTION dg_decide(
    p_items dg_attempt[], p_rules dg_decide_rules[], p_record boolean)
RETURNS TABLE (decision_id bigint, rule text, facts jsonb, stale boolean, at timestamptz,
               abandoned boolean)
LANGUAGE plpgsql
-- Planned once per connection: a custom plan for the read below costs more than it executes.
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v        dg_attempt;
    lim      dg_decide_rules;
    r        record;
    v_at     timestamptz;
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
    v_lengths integer[];
    v_keys   text[];
    -- Before the locks, and once they are held: the stamp of every live item.
    v_before timestamptz := clock_timestamp();
    v_now    timestamptz;
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
    w_rows   dg_decision_row[] := '{}';
    w_row    dg_decision_row;
BEGIN
    -- The locks any item may need. A campaign is locked only for an item whose caller ID is
    -- new to it (no use in the last 24 h): only such an item can raise the count of the
    -- campaign's caller IDs. A live item's use is judged a minute early, so that it is still
    -- recent when the item is stamped; a use only ever moves forward, so an item found with a
    -- recent use keeps it.
    IF p_record THEN
        SELECT coalesce(array_agg(kk.k), '{}'),
               coalesce(array_agg(x.ordinality) FILTER (WHERE kk.kind = 3), '{}')
          INTO v_keys, v_camp_new
          FROM unnest(p_items) WITH ORDINALITY x
          JOIN unnest(p_rules) WITH ORDINALITY lm ON lm.ordinality = x.rules
         CROSS JOIN LATERAL (VALUES
               (1, 'dest:' || x.dest),
               (2, CASE WHEN cardinality(lm.cid_cap_limits) > 0
                          OR lm.cid_max_concurrent IS NOT NULL
                        THEN 'cid:' || x.caller END),
               (3, CASE WHEN lm.campaign_rotation_limit IS NOT NULL
                         AND NOT EXISTS (
                             SELECT 1 FROM campaign_callerids cc
                              WHERE cc.campaign = x.campaign AND cc.caller_id = x.caller
                                AND cc.last_used_at > CASE WHEN x.live
                                    THEN v_before - interval '23 hours 59 minutes'
                                    ELSE x.at - interval '24 hours' END)
                        THEN 'camp:' || x.campaign END)
               ) kk (kind, k)
         WHERE x.pre_rule IS NULL AND x.hours_facts IS NULL AND kk.k IS NOT NULL;
        PERFORM dg_lock(v_keys);
    END IF;
    v_now := clock_timestamp();
    IF v_now > v_before + interval '1 minute' THEN
        -- The live items' "recent use" above may have aged out while the locks were awaited.
        RAISE EXCEPTION 'dg_decide waited % for its locks', v_now - v_before
              USING ERRCODE = 'serialization_failure';
    END IF;
    SELECT pl.lengths INTO v_lengths FROM dg_prefix_lengths pl;

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
          CROSS JOIN LATERAL (SELECT CASE WHEN x.live THEN v_now ELSE x.at END AS at,
                                     CASE WHEN x.live THEN 'infinity'::timestamptz
                                          ELSE x.at END AS until) t
          LEFT JOIN campaigns c ON c.name = x.campaign
          LEFT JOIN callerids k ON k.number = x.caller AND x.pre_rule IS NULL
          -- The CASE keeps the cast from ever seeing a destination a rule refused.
          LEFT JOIN LATERAL (
                SELECT b.campaign, b.source, b.expires_at FROM blacklist_numbers b
                 WHERE b.number = CASE WHEN x.pre_rule IS NULL
                                       THEN substr(x.dest, 2)::bigint END
                   AND b.campaign IN ('', x.campaign)
                   AND (b.expires_at IS NULL OR b.expires_at > t.at)
                 ORDER BY b.campaign DESC LIMIT 1) bn ON true
          -- The longest listed prefix of the destination, probed at the lengths listed
          -- prefixes have (of prefixes of one number the longest sorts last). Without the
          -- lengths' row (never expected), every length is probed: slower, never wrong.
          LEFT JOIN LATERAL (
                SELECT b.prefix, b.campaign, b.source, b.expires_at FROM blacklist_prefixes b
                 WHERE b.prefix = ANY (ARRAY(
                           SELECT left(x.dest, n)
                             FROM unnest(coalesce(v_lengths,
                                                  '{2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}')) n
                            WHERE n <= length(x.dest)))
                   AND b.campaign IN ('', x.campaign)
                   AND (b.expires_at IS NULL OR b.expires_at > t.at)
                 ORDER BY b.prefix DESC LIMIT 1) bp ON x.pre_rule IS NULL
          LEFT JOIN LATERAL dg_destination_attempts(x.dest, t.at, lm.dest_window_s, t.until) h
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
          LEFT JOIN LATERAL dg_callerid_attempts(
                    x.caller, t.at, lm.cid_window_s, lm.cid_cap_windows, lm.max_call_s,
                    t.until) cn
                 ON x.pre_rule IS NULL AND x.hours_facts IS NULL
         ORDER BY x.ordinality
    LOOP
        v := p_items[r.n];
        lim := p_rules[v.rules];
        v_at := CASE WHEN v.live THEN v_now ELSE v.at END;
        v_rule := v.pre_rule;
        v_facts := v.pre_facts::jsonb;
        decision_id := NULL;
        at := v_at;
        abandoned := false;
        stale := false;

        IF coalesce(r.version, 0) <> v.campaign_version THEN
            rule := NULL;
            facts := jsonb_build_object('version', coalesce(r.version, 0));
            stale := true;
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF p_record AND v_now > v.deadline THEN
            rule := NULL;
            facts := jsonb_build_object('late_ms',
                round(extract(epoch FROM v_now - v.deadline) * 1000));
            abandoned := true;
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
                PERFORM dg_write_decisions(w_rows);
                w_rows := '{}';
            END IF;
            IF v_dest_again THEN
                SELECT h.ats, h.callers, h.answered INTO v_ats, v_callers, v_answered
                  FROM dg_destination_attempts(
                           v.dest, v_at, lim.dest_window_s,
                           CASE WHEN v.live THEN 'infinity' ELSE v_at END) h;
            ELSE
                v_ats := r.ats;
                v_callers := r.callers;
                v_answered := r.answered;
            END IF;
            IF v_cid_again THEN
                SELECT n.counts, n.up INTO v_counts, v_up
                  FROM dg_callerid_attempts(v.caller, v_at, lim.cid_window_s,
                                            lim.cid_cap_windows, lim.max_call_s,
                                            CASE WHEN v.live THEN 'infinity' ELSE v_at END) n;
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
                       > v_at - make_interval(secs => lim.cooldown_s)
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
           AND v_ats[v_n] > v_at - make_interval(secs => lim.interval_s) THEN
            v_rule := 'destination_interval';
            v_facts := jsonb_build_object('last_at', v_ats[v_n], 'interval_s', lim.interval_s,
                'frees_at', v_ats[v_n] + make_interval(secs => lim.interval_s));
        END IF;

        IF v_rule IS NULL AND v_n > 0 THEN
            FOR j IN 1 .. coalesce(cardinality(lim.dest_cap_limits), 0) LOOP
                v_w := make_interval(secs => lim.dest_cap_windows[j]);
                -- Oldest first: the attempts inside the window are the last ones.
                v_k := v_n + 1;
                WHILE v_k > 1 AND v_ats[v_k - 1] > v_at - v_w LOOP
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
                IF v_ats[i] > v_at - v_w AND NOT v_callers[i] = ANY (v_seen) THEN
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
                       AND cc.last_used_at > v_at - interval '24 hours')
              INTO v_t, v_n;
            IF (v_t IS NULL OR v_t <= v_at - interval '24 hours')
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
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v_at - v_w
                       AND (v.live OR d.at <= v_at);
                END IF;
                IF v_n >= lim.cid_cap_limits[i] THEN
                    SELECT d.at INTO v_t FROM decisions d
                     WHERE d.caller_id = v.caller AND d.allowed AND d.at > v_at - v_w
                       AND (v.live OR d.at <= v_at)
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

        IF p_record THEN
            decision_id := nextval('decisions_id_seq');
            w_row := (decision_id, v_at, v.caller, v.dest, v.campaign, v_rule IS NULL, v_rule,
                      coalesce(v_facts, '{}'), v.source, v.channel_id, v.attempt_id, v.origin);
            w_rows := w_rows || w_row;
            IF v_rule IS NULL THEN
                b_dests := b_dests || v.dest;
                b_callers := b_callers || v.caller;
            END IF;
        END IF;
        rule := v_rule;
        facts := coalesce(v_facts, '{}'::jsonb);
        RETURN NEXT;
    END LOOP;

    IF cardinality(w_rows) > 0 THEN
        PERFORM dg_write_decisions(w_rows);
    END IF;
END;
$$;
