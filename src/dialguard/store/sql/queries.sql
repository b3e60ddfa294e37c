-- Named queries. Each block starts with "-- name: NAME" and runs to the next block.

-- name: decide
-- Decisions in arrival order, answered in the same order (one decision is a batch of one); each
-- distinct rules once, in a dg_decide_rules[] literal; recorded ($3) or not. No facts (most
-- allows) come back as NULL, which the driver hands over without decoding.
SELECT decision_id, rule, nullif(facts, '{}') AS facts, stale, at, abandoned
  FROM dg_decide($1::dg_attempt[], $2::text::dg_decide_rules[], $3)

-- name: decision_not_placed
-- An allowed decision whose answer came after its caller gave up: the call was hung up as
-- store_unavailable, so the record says so, and no longer counts as an attempt or a call up.
UPDATE decisions
   SET allowed = false, rule = 'store_unavailable',
       facts = facts || '{"answered_late": true}'
 WHERE id = $1 AND allowed

-- name: calls_up_from
-- The calls a gate ($1: its Asterisk and application) allowed in the last $2 seconds that have
-- no outcome yet.
SELECT id, channel_id, campaign, caller_id, at FROM decisions
 WHERE origin = $1 AND allowed AND outcome_at IS NULL AND channel_id IS NOT NULL
   AND at > clock_timestamp() - make_interval(secs => $2)

-- name: database_time
SELECT clock_timestamp()

-- name: record_outcome
SELECT recorded, caller_id, campaign FROM dg_record_outcome($1, $2, $3, $4, $5, $6)

-- name: get_decision
SELECT * FROM decisions WHERE id = $1

-- name: list_decisions
SELECT * FROM decisions
 WHERE ($1::text IS NULL OR destination = $1)
   AND ($2::text IS NULL OR caller_id = $2)
   AND ($3::text IS NULL OR campaign = $3)
   AND ($4::timestamptz IS NULL OR at >= $4)
   AND ($5::timestamptz IS NULL OR at < $5)
   AND ($6::text IS NULL OR rule = $6 OR ($6 = 'none' AND allowed))
   AND ($7::bigint IS NULL OR id < $7)
 ORDER BY id DESC
 LIMIT $8

-- name: get_campaign
SELECT name, profile, overrides, paused, pause_reason, paused_at, version, updated_at
  FROM campaigns WHERE name = $1

-- name: list_campaigns
SELECT name, profile, overrides, paused, pause_reason, paused_at, version, updated_at
  FROM campaigns ORDER BY name

-- name: set_campaign
INSERT INTO campaigns AS c (name, profile, overrides)
VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
   SET profile = excluded.profile, overrides = excluded.overrides,
       version = c.version + 1, updated_at = now()
RETURNING name, profile, overrides, paused, pause_reason, paused_at, version, updated_at

-- name: pause_campaign
INSERT INTO campaigns AS c (name, paused, pause_reason, paused_at)
VALUES ($1, $2, $3, CASE WHEN $2 THEN now() END)
ON CONFLICT (name) DO UPDATE
   SET paused = excluded.paused, pause_reason = excluded.pause_reason,
       paused_at = excluded.paused_at, version = c.version + 1, updated_at = now()
RETURNING name, profile, overrides, paused, pause_reason, paused_at, version, updated_at

-- name: add_callerid
INSERT INTO callerids AS c (number, campaign)
VALUES ($1, $2)
ON CONFLICT (number) DO UPDATE SET campaign = excluded.campaign
RETURNING number, state, reason, campaign, created_at, changed_at

-- name: get_callerid
SELECT number, state, reason, campaign, created_at, changed_at FROM callerids WHERE number = $1

-- name: list_callerids
SELECT number, state, reason, campaign, created_at, changed_at FROM callerids
 WHERE ($1::text IS NULL OR state = $1)
 ORDER BY number

-- name: set_callerid_state
-- A retired caller ID is final: the WHERE keeps it retired, and the caller sees no row.
UPDATE callerids
   SET state = $2, reason = $3, changed_at = now()
 WHERE number = $1 AND state <> 'retired'
RETURNING number, state, reason, campaign, created_at, changed_at

-- name: callerid_state_counts
SELECT state, count(*)::int AS n FROM callerids GROUP BY state

-- name: blacklist_add_number
-- An entry already there keeps the later of its expiry and the new one (none is the latest),
-- unless $6 (replace) asks for the new one as given.
INSERT INTO blacklist_numbers AS b (number, campaign, source, reason, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (number, campaign) DO UPDATE
   SET source = excluded.source, reason = excluded.reason,
       expires_at = CASE WHEN $6 THEN excluded.expires_at
                         WHEN b.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                         ELSE greatest(b.expires_at, excluded.expires_at) END
RETURNING number, campaign, source, reason, expires_at, created_at

-- name: blacklist_get_number
SELECT number, campaign, source, reason, expires_at, created_at
  FROM blacklist_numbers WHERE number = $1 AND campaign = $2

-- name: blacklist_remove_number
DELETE FROM blacklist_numbers WHERE number = $1 AND campaign = $2 RETURNING number

-- name: blacklist_add_prefix
-- An entry already there keeps the later of its expiry and the new one (none is the latest),
-- unless $6 (replace) asks for the new one as given.
INSERT INTO blacklist_prefixes AS b (prefix, campaign, source, reason, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (prefix, campaign) DO UPDATE
   SET source = excluded.source, reason = excluded.reason,
       expires_at = CASE WHEN $6 THEN excluded.expires_at
                         WHEN b.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                         ELSE greatest(b.expires_at, excluded.expires_at) END
RETURNING prefix, campaign, source, reason, expires_at, created_at

-- name: blacklist_get_prefix
SELECT prefix, campaign, source, reason, expires_at, created_at
  FROM blacklist_prefixes WHERE prefix = $1 AND campaign = $2

-- name: blacklist_remove_prefix
DELETE FROM blacklist_prefixes WHERE prefix = $1 AND campaign = $2 RETURNING prefix

-- name: blacklist_stage
CREATE TEMPORARY TABLE blacklist_stage (
    number bigint, campaign text, source text, reason text, expires_at timestamptz, ord integer
) ON COMMIT DROP

-- name: blacklist_merge_stage
-- One row per key wins (the last in the file), then upsert into the blacklist; an entry already
-- there keeps the later of the two expiries (none is the latest), as one added alone does.
INSERT INTO blacklist_numbers AS b (number, campaign, source, reason, expires_at)
SELECT DISTINCT ON (number, campaign) number, campaign, source, reason, expires_at
  FROM blacklist_stage
 ORDER BY number, campaign, ord DESC
ON CONFLICT (number, campaign) DO UPDATE
   SET source = excluded.source, reason = excluded.reason,
       expires_at = CASE WHEN b.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                         ELSE greatest(b.expires_at, excluded.expires_at) END

-- name: blacklist_export_numbers
SELECT '+' || number::text AS value, campaign, source, reason, expires_at, 'number' AS kind
  FROM blacklist_numbers ORDER BY number, campaign

-- name: blacklist_export_prefixes
SELECT prefix AS value, campaign, source, reason, expires_at, 'prefix' AS kind
  FROM blacklist_prefixes ORDER BY prefix, campaign

-- name: insert_spooled
-- Calls allowed in fail-open mode, written back; a row already written is skipped.
WITH spooled AS (
    INSERT INTO decisions (at, caller_id, destination, campaign, allowed, rule, facts, source,
                           channel_id, spool_id, origin)
    SELECT s.at, s.caller_id, s.destination, s.campaign, true, NULL,
           '{"fail_open": true}'::jsonb, s.source, s.channel_id, s.spool_id, s.origin
      FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                  $7::text[], $8::text[])
           AS s(spool_id, at, caller_id, destination, campaign, source, channel_id, origin)
    -- A decision that reached the database under the same id (its answer came too late) is
    -- the same call: it counts once, and as placed, since the call went out.
    ON CONFLICT (spool_id) WHERE spool_id IS NOT NULL DO UPDATE
       SET allowed = true, rule = NULL, facts = decisions.facts || '{"fail_open": true}'
     WHERE NOT decisions.allowed
    RETURNING campaign, caller_id, at
)
INSERT INTO campaign_callerids AS cc (campaign, caller_id, last_used_at)
SELECT campaign, caller_id, max(at) FROM spooled GROUP BY campaign, caller_id
ON CONFLICT (campaign, caller_id) DO UPDATE
   SET last_used_at = greatest(cc.last_used_at, excluded.last_used_at)

-- name: latest_decision_for_channel
SELECT * FROM decisions WHERE channel_id = $1 ORDER BY id DESC LIMIT 1

-- name: record_outcome_judged
SELECT recorded, caller_id, campaign, rested FROM dg_record_outcome($1, $2, $3, $4, $5, $6, $7, $8)

-- name: record_outcomes_judged
-- Outcomes in arrival order, answered in the same order (recorded false: not recorded).
SELECT recorded, caller_id, campaign, rested
  FROM dg_record_outcomes($1, $2, $3, $4, $5, $6, $7, $8)

-- name: record_complaints
SELECT ord, complaint_id, duplicate, caller_id, campaign, blacklisted, callerid_rested,
       campaign_paused
  FROM dg_complaints($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
 ORDER BY ord

-- name: list_complaints
SELECT id, destination, caller_id, campaign, source, at, text, received_at FROM complaints
 WHERE ($1::text IS NULL OR destination = $1)
   AND ($2::text IS NULL OR caller_id = $2)
   AND ($3::text IS NULL OR campaign = $3)
   AND ($4::text IS NULL OR source = $4)
   AND ($5::timestamptz IS NULL OR at >= $5)
   AND ($6::timestamptz IS NULL OR at < $6)
   AND ($7::bigint IS NULL OR id < $7)
 ORDER BY id DESC
 LIMIT $8

-- name: callerid_health
-- Over the last $2 completed calls; complaints over the day before $3.
SELECT count(*)::int AS calls,
       (count(*) FILTER (WHERE w.outcome = 'answered'))::int AS answered,
       (count(*) FILTER (WHERE w.outcome = 'answered' AND w.answered_seconds < $4))::int
           AS short_calls,
       (count(*) FILTER (WHERE w.outcome = 'carrier_rejected'))::int AS carrier_rejections,
       (SELECT count(*)::int FROM complaints c
         WHERE c.caller_id = $1 AND c.at > $3::timestamptz - interval '24 hours'
           AND c.at <= $3::timestamptz)
           AS complaints_24h
  FROM (SELECT d.outcome, d.answered_seconds FROM decisions d
         WHERE d.caller_id = $1 AND d.allowed AND d.outcome_at IS NOT NULL
         ORDER BY d.at DESC LIMIT $2) w

-- name: scrub_prefix_lengths
-- The lengths of the prefixes on the blacklists a scrub reads: each destination is probed at
-- these lengths only, instead of at every length from 2 to 16.
SELECT DISTINCT length(prefix) AS n FROM blacklist_prefixes WHERE campaign IN ('', $1) ORDER BY 1

-- name: scrub_facts
-- What the database knows about each destination of a batch, for those it knows anything about:
-- the blacklist entry that denies it, else its allowed calls in the last $4 seconds (oldest first).
-- Prefixes are probed at the lengths in $5; an empty $5 skips them (matched by the caller).
-- $1 is the destinations joined by commas: one text is far cheaper to send than an array.
WITH d AS (SELECT DISTINCT u.dest FROM unnest(string_to_array($1::text, ',')) AS u(dest))
SELECT d.dest,
       bn.campaign AS number_campaign, bn.source AS number_source,
       bn.expires_at AS number_expires_at,
       bp.prefix, bp.campaign AS prefix_campaign, bp.source AS prefix_source,
       bp.expires_at AS prefix_expires_at,
       h.ats, h.callers, h.answered
  FROM d
  LEFT JOIN LATERAL (
        SELECT b.campaign, b.source, b.expires_at FROM blacklist_numbers b
         WHERE b.number = substr(d.dest, 2)::bigint AND b.campaign IN ('', $2)
           AND (b.expires_at IS NULL OR b.expires_at > $3)
         ORDER BY b.campaign DESC LIMIT 1) bn ON true
  LEFT JOIN LATERAL (
        SELECT b.prefix, b.campaign, b.source, b.expires_at FROM blacklist_prefixes b
         WHERE cardinality($5::int[]) > 0
           AND b.prefix IN (SELECT left(d.dest, n) FROM unnest($5::int[]) n
                             WHERE n BETWEEN 2 AND length(d.dest))
           AND b.campaign IN ('', $2)
           AND (b.expires_at IS NULL OR b.expires_at > $3)
         ORDER BY length(b.prefix) DESC LIMIT 1) bp ON bn.source IS NULL
  LEFT JOIN LATERAL (
        SELECT array_agg(x.at ORDER BY x.at) AS ats,
               array_agg(x.caller_id ORDER BY x.at) AS callers,
               array_agg(x.answered_seconds ORDER BY x.at) AS answered
          FROM decisions x
         WHERE x.destination = d.dest AND x.allowed AND x.at <= $3
           AND x.at > $3 - make_interval(secs => $4)) h
        ON bn.source IS NULL AND bp.prefix IS NULL
 WHERE bn.source IS NOT NULL OR bp.prefix IS NOT NULL OR h.ats IS NOT NULL

-- name: prune_decisions
-- In batches, oldest first, so a large backlog never holds locks for long. Ids mostly follow
-- time, so walking the primary key finds each batch at its start without sorting the backlog
-- (the time index is a BRIN, which cannot give rows in order).
DELETE FROM decisions
 WHERE id IN (SELECT id FROM decisions WHERE at < $1 ORDER BY id LIMIT $2)

-- name: prune_campaign_callerids
DELETE FROM campaign_callerids WHERE last_used_at < $1

-- name: scrub_prefix_count
SELECT count(*)::int FROM blacklist_prefixes WHERE campaign IN ('', $1)

-- name: scrub_prefixes
-- The live prefixes a scrub matches in memory; a campaign's own entry wins over the global one.
SELECT DISTINCT ON (prefix) prefix, campaign, source, expires_at FROM blacklist_prefixes
 WHERE campaign IN ('', $1) AND (expires_at IS NULL OR expires_at > $2)
 ORDER BY prefix, campaign DESC

-- name: import_without_flush_wait
-- An import interrupted by a crash is simply run again; not waiting for each chunk's WAL
-- flush lets PostgreSQL start on the next chunk sooner.
SET LOCAL synchronous_commit = off

-- name: blacklist_bulk_lock
LOCK TABLE blacklist_numbers IN ACCESS EXCLUSIVE MODE

-- name: blacklist_is_empty
SELECT NOT EXISTS (SELECT 1 FROM blacklist_numbers)

-- name: blacklist_bulk_prepare
-- Fresh storage (rows then sit in file order, so ctid order is file order) and no key to
-- maintain row by row: the key is built once at the end, several times faster.
TRUNCATE blacklist_numbers;
ALTER TABLE blacklist_numbers DROP CONSTRAINT blacklist_numbers_pkey

-- name: blacklist_bulk_key
ALTER TABLE blacklist_numbers ADD CONSTRAINT blacklist_numbers_pkey PRIMARY KEY (number, campaign)

-- name: blacklist_bulk_dedupe
-- The last row of a key in the file wins, as in a normal import.
DELETE FROM blacklist_numbers a
 USING blacklist_numbers b
 WHERE a.number = b.number AND a.campaign = b.campaign AND a.ctid < b.ctid

-- name: attach_channel
UPDATE decisions SET channel_id = $2 WHERE id = $1 AND channel_id IS NULL
