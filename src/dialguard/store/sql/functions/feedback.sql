-- The feedback functions as they run now: complaints and outcomes. Re-applied by the migrator
-- whenever this file changes; see decisions.sql for the lock order every function here keeps
-- (it is applied first: files go in name order).

-- dg_complaints: record complaints (arrays, one element each, in order) and apply their effects in
-- the caller's transaction: blacklist the destination, rest the caller ID at its thresholds, pause
-- the campaign at its rate. Missing caller IDs and campaigns are first laid on the destination's
-- last allowed call in p_attribution_s. The caller IDs' and campaigns' locks are taken up front,
-- through dg_lock, so each judgement sees the complaints and calls before it; callers send few
-- complaints a transaction, so that no decision waits on an import for long. A threshold is
-- judged over every window that holds the complaint, so the order complaints arrive in does not
-- matter.
CREATE OR REPLACE FUNCTION dg_complaints(
    p_destinations text[],
    p_callers text[],
    p_campaigns text[],
    p_sources text[],
    p_ats timestamptz[],
    p_texts text[],
    p_expires timestamptz[],
    p_attribution_s integer,
    p_to_rest integer,
    p_rest_window_s integer,
    p_rate_to_rest numeric,
    p_rate_calls integer,
    p_rate_min_calls integer,
    p_campaign_rate numeric,
    p_campaign_window_s integer,
    p_campaign_min_calls integer
) RETURNS TABLE (ord integer, complaint_id bigint, duplicate boolean, caller_id text,
                 campaign text, blacklisted boolean, callerid_rested boolean,
                 campaign_paused boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_callers    text[] := p_callers;
    v_campaigns  text[] := p_campaigns;
    v_c1         text;
    v_c2         text;
    v_id         bigint;
    v_state      text;
    v_paused     boolean;
    v_n          integer;
    v_c          integer;
    v_oldest     timestamptz;
    v_window     interval;
    v_end        timestamptz;
    v_hit        boolean;
    i            integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_destinations), 0) LOOP
        IF v_callers[i] IS NULL OR v_campaigns[i] IS NULL THEN
            SELECT d.caller_id, d.campaign INTO v_c1, v_c2
              FROM decisions d
             WHERE d.destination = p_destinations[i] AND d.allowed AND d.at <= p_ats[i]
               AND d.at > p_ats[i] - make_interval(secs => p_attribution_s)
               AND (v_callers[i] IS NULL OR d.caller_id = v_callers[i])
               AND (v_campaigns[i] IS NULL OR d.campaign = v_campaigns[i])
             ORDER BY d.at DESC LIMIT 1;
            IF FOUND THEN
                v_callers[i] := coalesce(v_callers[i], v_c1);
                v_campaigns[i] := coalesce(v_campaigns[i], v_c2);
            END IF;
        END IF;
    END LOOP;

    PERFORM dg_lock(ARRAY(SELECT 'cid:' || k FROM unnest(v_callers) k)
                    || ARRAY(SELECT 'camp:' || k FROM unnest(v_campaigns) k));

    FOR i IN 1 .. coalesce(cardinality(p_destinations), 0) LOOP
        ord := i;
        caller_id := v_callers[i];
        campaign := v_campaigns[i];
        blacklisted := false;
        callerid_rested := false;
        campaign_paused := false;
        v_id := NULL;
        INSERT INTO complaints AS c (destination, caller_id, campaign, source, at, text)
        VALUES (p_destinations[i], v_callers[i], v_campaigns[i], p_sources[i], p_ats[i],
                p_texts[i])
        ON CONFLICT ON CONSTRAINT complaints_once DO NOTHING
        RETURNING c.id INTO v_id;

        IF v_id IS NULL THEN
            -- Delivered before: counted once, changes nothing; answer with the first delivery.
            SELECT c.id, c.caller_id, c.campaign INTO complaint_id, caller_id, campaign
              FROM complaints c
             WHERE c.destination = p_destinations[i] AND c.source = p_sources[i]
               AND c.at = p_ats[i];
            duplicate := true;
            RETURN NEXT;
            CONTINUE;
        END IF;
        complaint_id := v_id;
        duplicate := false;

        -- Blacklist globally; never shorten an entry that is already there.
        INSERT INTO blacklist_numbers AS b (number, campaign, source, reason, expires_at)
        VALUES (substr(p_destinations[i], 2)::bigint, '', 'complaint',
                'complaint via ' || p_sources[i], p_expires[i])
        ON CONFLICT (number, campaign) DO UPDATE
           SET source = excluded.source, reason = excluded.reason,
               expires_at = excluded.expires_at
         WHERE b.expires_at IS NOT NULL
           AND (excluded.expires_at IS NULL OR excluded.expires_at > b.expires_at);
        blacklisted := FOUND;

        IF v_callers[i] IS NOT NULL THEN
            SELECT k.state INTO v_state FROM callerids k WHERE k.number = v_callers[i];
            IF v_state = 'active' THEN
                v_window := make_interval(secs => p_rest_window_s);
                -- The fullest window that holds this complaint: one ending at it, or at a later
                -- complaint less than a window after it (complaints may arrive out of order).
                SELECT coalesce(max(w.n), 0) INTO v_c
                  FROM complaints e
                 CROSS JOIN LATERAL (
                       SELECT count(*) AS n FROM complaints c
                        WHERE c.caller_id = v_callers[i] AND c.at > e.at - v_window
                          AND c.at <= e.at) w
                 WHERE e.caller_id = v_callers[i] AND e.at >= p_ats[i]
                   AND e.at < p_ats[i] + v_window;
                IF v_c >= p_to_rest THEN
                    callerid_rested := true;
                ELSE
                    SELECT count(*), min(w.at) INTO v_n, v_oldest FROM (
                        SELECT d.at FROM decisions d
                         WHERE d.caller_id = v_callers[i] AND d.allowed AND d.at <= p_ats[i]
                         ORDER BY d.at DESC LIMIT p_rate_calls) w;
                    IF v_n >= p_rate_min_calls THEN
                        SELECT count(*) INTO v_c FROM complaints c
                         WHERE c.caller_id = v_callers[i] AND c.at >= v_oldest
                           AND c.at <= p_ats[i];
                        callerid_rested := v_c >= p_rate_to_rest * v_n;
                    END IF;
                END IF;
                IF callerid_rested THEN
                    UPDATE callerids k SET state = 'rested', reason = 'complaints',
                           changed_at = now()
                     WHERE k.number = v_callers[i] AND k.state = 'active';
                    callerid_rested := FOUND;
                END IF;
            END IF;
        END IF;

        IF v_campaigns[i] IS NOT NULL THEN
            v_paused := NULL;
            SELECT g.paused INTO v_paused FROM campaigns g WHERE g.name = v_campaigns[i];
            IF NOT coalesce(v_paused, false) THEN
                v_window := make_interval(secs => p_campaign_window_s);
                v_hit := false;
                -- Judged over each window that holds this complaint and ends at a complaint
                -- (this one, or a later one that arrived first); paused if any is at the rate.
                FOR v_end IN
                    SELECT e.at FROM complaints e
                     WHERE e.campaign = v_campaigns[i] AND e.at >= p_ats[i]
                       AND e.at < p_ats[i] + v_window
                     ORDER BY e.at
                LOOP
                    SELECT count(*) INTO v_c FROM complaints c
                     WHERE c.campaign = v_campaigns[i] AND c.at > v_end - v_window
                       AND c.at <= v_end;
                    -- Only a campaign with at most v_c / rate calls can be at the rate: a big
                    -- one is counted no further than that.
                    SELECT count(*) INTO v_n FROM (
                        SELECT 1 FROM decisions d
                         WHERE d.campaign = v_campaigns[i] AND d.allowed
                           AND d.at > v_end - v_window AND d.at <= v_end
                         LIMIT greatest(p_campaign_min_calls,
                                        floor(v_c / nullif(p_campaign_rate, 0))::integer) + 1) w;
                    v_hit := v_n >= p_campaign_min_calls AND v_c >= p_campaign_rate * v_n;
                    EXIT WHEN v_hit;
                END LOOP;
                IF v_hit THEN
                    INSERT INTO campaigns AS g (name, paused, pause_reason, paused_at)
                    VALUES (v_campaigns[i], true, 'complaints', now())
                    ON CONFLICT (name) DO UPDATE
                       SET paused = true, pause_reason = 'complaints', paused_at = now(),
                           version = g.version + 1, updated_at = now()
                     WHERE NOT g.paused;
                    campaign_paused := FOUND;
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- dg_record_outcome: record one outcome; a caller ID whose last p_block_window completed calls
-- since its last change of state hold a share of carrier rejections of at least p_block_share is
-- rested (judged only once it has that many calls). The window starts at the last change of
-- state, so a caller ID a person released is judged on what it does afterwards.
CREATE OR REPLACE FUNCTION dg_record_outcome(
    p_decision_id bigint,
    p_outcome text,
    p_answered_seconds integer,
    p_cause integer,
    p_sip_code integer,
    p_at timestamptz,
    p_block_window integer DEFAULT 50,
    p_block_share numeric DEFAULT 0.5
) RETURNS TABLE (recorded boolean, caller_id text, campaign text, rested boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_caller    text;
    v_campaign  text;
    v_state     text;
    v_since     timestamptz;
    v_n         integer;
    v_r         integer;
    v_rested    boolean := false;
BEGIN
    SELECT d.caller_id INTO v_caller FROM decisions d
     WHERE d.id = p_decision_id AND d.allowed AND d.outcome_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- One caller ID's outcomes are judged one after the other, each seeing those before it.
    PERFORM dg_lock(ARRAY['cid:' || v_caller]);
    UPDATE decisions d
       SET outcome = p_outcome, outcome_at = p_at, answered_seconds = p_answered_seconds,
           cause = p_cause, sip_code = p_sip_code
     WHERE d.id = p_decision_id AND d.allowed AND d.outcome_at IS NULL
    RETURNING d.campaign INTO v_campaign;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    SELECT k.state, k.changed_at INTO v_state, v_since FROM callerids k WHERE k.number = v_caller;
    IF v_state = 'active' AND coalesce(p_block_window, 0) > 0 THEN
        SELECT count(*), count(*) FILTER (WHERE w.outcome = 'carrier_rejected') INTO v_n, v_r
          FROM (SELECT d.outcome FROM decisions d
                 WHERE d.caller_id = v_caller AND d.allowed AND d.outcome_at IS NOT NULL
                   AND d.decided_at >= v_since
                 ORDER BY d.at DESC LIMIT p_block_window) w;
        IF v_n >= p_block_window AND v_r >= p_block_share * v_n THEN
            UPDATE callerids k SET state = 'rested', reason = 'carrier_block_suspected',
                   changed_at = now()
             WHERE k.number = v_caller AND k.state = 'active';
            v_rested := FOUND;
        END IF;
    END IF;
    RETURN QUERY SELECT true, v_caller, v_campaign, v_rested;
END;
$$;

-- Outcomes in batches: one round trip and one commit for many. Each is recorded and judged by
-- dg_record_outcome, in order, after the caller IDs' locks are taken. One row comes back for
-- each outcome, in order; recorded is false for one that was not recorded.
CREATE OR REPLACE FUNCTION dg_record_outcomes(
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
    PERFORM dg_lock(ARRAY(SELECT 'cid:' || d.caller_id FROM decisions d
                           WHERE d.id = ANY (p_decision_ids) AND d.allowed
                             AND d.outcome_at IS NULL));
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
